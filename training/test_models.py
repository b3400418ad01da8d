"""The one builder of test models, for the test suite, benchmarks and the demo.

Every model is written by production code: mergekit through `training.merge` (the kit MoE),
transformers' `save_pretrained` (the random Mixtral), and the layout is chosen with the
format module's converter (`model_registry.checkpoint.convert_checkpoint`, docs/format.md).
Nothing here states a tensor name or a slice.

- `build_kit_moe`: the kit's base and four trained experts merged into a MoFE Mixtral
  (4 layers, 4 experts, top-2, fp32). Its FFNs are trained, so predictions are meaningful,
  and its random router (mergekit's `random` gate mode, N(0, 1), seeded) makes routing vary
  clearly by token, which fp32 comparisons with transformers need.
- `build_random_mixtral`: a randomly initialised Mixtral of any size with the kit's
  tokenizer, for speed benchmarks and shape-level tests.

Both write a mofe.json naming each expert's domain.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .kit import TOPICS, KitSizes, _quiet_transformers, _train_tokenizer

# The kit MoE's shape: the kit's four experts in TOPICS order on the kit's 4-layer base.
NUM_EXPERTS = 4
TOP_K = 2
NUM_LAYERS = KitSizes().num_layers
DOMAINS = [domain for _, domain, _, _ in TOPICS[:NUM_EXPERTS]]
LAYOUTS = ("fused", "per_expert")


def build_kit_moe(kit: Path, out: Path, layout: str = "fused", gate_mode: str = "random",
                  seed: int = 0) -> Path:
    """Merge the kit's experts (its mofe.yaml, `gate_mode` replaced) into `out` in `layout`.

    The merge writes the per-expert layout; "fused" (the layout mergekit itself writes) is
    made from it by the format module's converter."""
    from model_registry.checkpoint import convert_checkpoint

    from .config import load_config
    from .merge import merge_experts

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    cfg = load_config(Path(kit) / "mofe.yaml")
    merge = cfg.merge.model_copy(update={"gate_mode": gate_mode})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        merged = work / "merged"
        merge_experts(merge, merged, seed)
        if layout == "per_expert":
            shutil.rmtree(out, ignore_errors=True)
            merged.rename(out)
        else:
            convert_checkpoint(merged, out, "fused", overwrite=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def build_random_mixtral(out: Path, sizes: KitSizes = KitSizes(), experts: int = NUM_EXPERTS,
                         top_k: int = TOP_K, seed: int = 0, dtype: str = "float32",
                         domains: list[str] | None = None, layout: str = "per_expert") -> Path:
    """A randomly initialised Mixtral with the kit tokenizer, in `layout`, and a mofe.json
    naming expert domains. For speed benchmarks and shape-level tests, where the weights
    only need the right shapes and routing that varies by token."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from model_registry.checkpoint import ROUTER_PARAM_MARKERS, atomic_directory, convert_checkpoint
    from model_registry.manifest import ExpertRecord, Manifest

    from . import __version__

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    _quiet_transformers()
    out = Path(out)
    work = out.with_name(f".{out.name}.work")
    shutil.rmtree(work, ignore_errors=True)
    try:
        tokenizer = _train_tokenizer(work / "tokenizer", sizes.vocab_size)
        config = MixtralConfig(
            vocab_size=len(tokenizer), hidden_size=sizes.hidden_size,
            intermediate_size=sizes.intermediate_size, num_hidden_layers=sizes.num_layers,
            num_attention_heads=sizes.num_heads, num_key_value_heads=sizes.num_kv_heads,
            max_position_embeddings=sizes.max_positions, num_local_experts=experts,
            num_experts_per_tok=top_k, tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        model = MixtralForCausalLM(config).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():  # sharper routers: routing varies
                if any(m in name for m in ROUTER_PARAM_MARKERS):
                    param.normal_(0.0, 0.5)
        domains = domains or [TOPICS[i % len(TOPICS)][1] for i in range(experts)]
        # A new model's save_pretrained writes the per-expert layout (docs/format.md).
        target = out if layout == "per_expert" else work / "per-expert"
        with atomic_directory(target, overwrite=True) as tmp:
            model.to(getattr(torch, dtype)).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            Manifest(project_version=__version__, num_layers=sizes.num_layers,
                     num_experts=experts, top_k=top_k, dtype=dtype,
                     experts=[ExpertRecord(source=f"random-init:seed={seed}", index=i, domain=d)
                              for i, d in enumerate(domains)]).save(tmp)
        if layout == "fused":
            convert_checkpoint(target, out, "fused", overwrite=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
