"""transformers' Trainer with two changes for frozen experts: checkpoints hold only the
trainable state, and resuming restores every weight.

Checkpoints: Trainer's own save writes the whole model through save_pretrained, which
un-fuses and copies every frozen expert (more than 4 GiB at once at TinyLlama x 4 experts).
The experts never change and are known from the merged checkpoint, so a checkpoint holds
the trainable parameters only (training.save.TRAINABLE_FILE) plus Trainer's optimizer,
scheduler, RNG and state files. Models with nothing frozen (method full) and PEFT models
(adapters only) keep Trainer's own save.

Resume: Trainer._load_from_checkpoint reads model.safetensors with a plain non-strict
load_state_dict. transformers 5 save_pretrained writes Mixtral back in the layout it was
loaded from (here the merged checkpoint's per-expert names, docs/format.md), and those names
do not match the fused in-memory parameters, so the router silently kept its pre-resume
values and a resumed run diverged from an uninterrupted one. We map names back (the format
module's to_fused) and load strictly.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import Trainer

from model_registry.checkpoint import to_fused

from .save import TRAINABLE_FILE, load_trainable, save_trainable


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


class MoFETrainer(Trainer):
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if _is_peft(model) or all(p.requires_grad for p in model.parameters()):
            return super()._save(output_dir, state_dict)
        import torch
        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return None
        save_trainable(model, Path(output_dir))
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        trainable = Path(resume_from_checkpoint) / TRAINABLE_FILE
        if trainable.is_file():
            return load_trainable(model, trainable)
        weights = Path(resume_from_checkpoint) / "model.safetensors"
        if _is_peft(model) or not weights.is_file():
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
