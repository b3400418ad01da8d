"""A tiny random Mixtral (4 experts, top-2) with the kit's tokenizer, for serving tests.

Built here rather than with the training pipeline so serving tests do not wait on a
merge + training run: the serving code only needs a real Mixtral checkpoint in the fused
layout mergekit writes (docs/format.md), plus a mofe.json with expert domains.
"""

from __future__ import annotations

import shutil
from pathlib import Path

DOMAINS = ["medical", "general", "medical", "general"]
NUM_EXPERTS = 4
TOP_K = 2
NUM_LAYERS = 4


def build_tiny_mixtral(out: Path, seed: int = 0, num_layers: int = NUM_LAYERS,
                       hidden_size: int | None = None, intermediate_size: int | None = None,
                       ) -> Path:
    """Write a fused-layout fp32 Mixtral checkpoint with tokenizer and mofe.json to `out`.

    Default sizes are the kit's (hidden 128, 4 layers); benchmarks pass bigger ones."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from model_registry.manifest import ExpertRecord, Manifest
    from training.kit import KitSizes, _train_tokenizer

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sizes = KitSizes()
    tokenizer = _train_tokenizer(tmp / "tokenizer", sizes.vocab_size)
    hidden = hidden_size or sizes.hidden_size
    heads = max(sizes.num_heads, hidden // 64)
    config = MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=hidden,
        intermediate_size=intermediate_size or sizes.intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=heads,
        num_key_value_heads=max(sizes.num_kv_heads, heads // 2),
        max_position_embeddings=sizes.max_positions, num_local_experts=NUM_EXPERTS,
        num_experts_per_tok=TOP_K, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32")
    torch.manual_seed(seed)
    model = MixtralForCausalLM(config).float().eval()
    with torch.no_grad():
        # Larger router weights than the init default so routing differs clearly by token.
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0.0, 0.5)
    model.save_pretrained(tmp / "model")
    _rewrite_fused(tmp / "model" / "model.safetensors")
    tokenizer.save_pretrained(tmp / "model")
    shutil.rmtree(tmp / "tokenizer")
    Manifest(
        project_version="0.1.0", num_layers=num_layers, num_experts=NUM_EXPERTS, top_k=TOP_K,
        dtype="float32",
        experts=[ExpertRecord(source=f"random-init:{seed}:{i}", index=i, domain=d)
                 for i, d in enumerate(DOMAINS)],
    ).save(tmp / "model")
    if out.exists():
        shutil.rmtree(out)
    (tmp / "model").rename(out)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _rewrite_fused(weights: Path) -> None:
    """Rewrite the per-expert tensors save_pretrained wrote into the fused layout mergekit
    writes (with the format module, docs/format.md), so serving reads fused weights."""
    import torch
    from safetensors.torch import load_file, save_file

    from model_registry.checkpoint import to_fused

    fused = to_fused(load_file(weights), torch.stack, torch.cat)
    save_file({k: v.contiguous() for k, v in fused.items()}, weights, metadata={"format": "pt"})


if __name__ == "__main__":
    import sys

    print(build_tiny_mixtral(Path(sys.argv[1])))
