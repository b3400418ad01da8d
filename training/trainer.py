"""transformers' Trainer with one fix: resuming a Mixtral checkpoint restores every weight.

Trainer._load_from_checkpoint reads model.safetensors with a plain non-strict
load_state_dict. transformers 5 save_pretrained writes Mixtral back in the layout it was
loaded from (here the merged checkpoint's per-expert names, docs/format.md), and those names
do not match the fused in-memory parameters, so the router silently kept its pre-resume
values and a resumed run diverged from an uninterrupted one. We map names back (the format
module's to_fused) and load strictly.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

from model_registry.checkpoint import to_fused


class MoFETrainer(Trainer):
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        weights = Path(resume_from_checkpoint) / "model.safetensors"
        if hasattr(model, "peft_config") or not weights.is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # adapters
        import torch
        from safetensors.torch import load_file

        state = to_fused(load_file(str(weights), device="cpu"), torch.stack, torch.cat)
        result = model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        missing = [k for k in result.missing_keys if k not in tied]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"{weights}: cannot restore the model: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
