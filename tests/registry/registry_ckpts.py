"""Tiny Mixtral / Llama checkpoints for registry tests, written with numpy + safetensors only.

Mixtral experts are byte-exact copies of dense Llama "source expert" FFNs, so a faithful
mofe.json passes the frozen check, and flipping any expert byte fails it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from model_registry.checkpoint import (
    PROJECTIONS,
    dense_name,
    expert_hashes,
    per_expert_name,
    router_name,
    to_fused,
)
from model_registry.manifest import ExpertRecord, Manifest, ModelSource

DIMS = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "vocab_size": 64}
DOMAINS = ("medical", "general", "medical", "general")


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _common(rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, v, n = DIMS["hidden_size"], DIMS["vocab_size"], DIMS["num_hidden_layers"]
    out = {"model.embed_tokens.weight": _rand(rng, v, h), "lm_head.weight": _rand(rng, v, h),
           "model.norm.weight": np.ones(h, np.float32)}
    for layer in range(n):
        p = f"model.layers.{layer}"
        out[f"{p}.input_layernorm.weight"] = np.ones(h, np.float32)
        out[f"{p}.post_attention_layernorm.weight"] = np.ones(h, np.float32)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}.self_attn.{proj}.weight"] = _rand(rng, h, h)
    return out


def _config(model_type: str, **extra) -> dict:
    arch = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}[model_type]
    return {"model_type": model_type, "architectures": [arch], "num_attention_heads": 2,
            "num_key_value_heads": 2, "torch_dtype": "float32", "tie_word_embeddings": False,
            **DIMS, **extra}


def write_llama(out: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    h, i = DIMS["hidden_size"], DIMS["intermediate_size"]
    tensors = _common(rng)
    shapes = {"w1": (i, h), "w3": (i, h), "w2": (h, i)}
    for layer in range(DIMS["num_hidden_layers"]):
        tensors |= {dense_name(layer, p): _rand(rng, *shape) for p, shape in shapes.items()}
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(_config("llama"), indent=2))
    return out


def write_mixtral(out: Path, sources: list[Path], layout: str = "fused", top_k: int = 2,
                  seed: int = 100, manifest: bool = True, base: Path | None = None,
                  parent: str | None = None) -> Path:
    """A Mixtral whose expert e is the FFN of sources[e] (copied bytes), plus a mofe.json.
    Names and stacking come from the format module (docs/format.md)."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(seed)
    dense = [load_file(str(s / "model.safetensors")) for s in sources]
    e, h = len(sources), DIMS["hidden_size"]
    tensors = _common(rng)
    for layer in range(DIMS["num_hidden_layers"]):
        tensors[router_name(layer, "per_expert")] = _rand(rng, e, h)
        for x, d in enumerate(dense):
            tensors |= {per_expert_name(layer, x, p): d[dense_name(layer, p)]
                        for p in PROJECTIONS}
    if layout == "fused":
        tensors = to_fused(tensors, np.stack, np.concatenate)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = _config("mixtral", num_local_experts=e, num_experts_per_tok=top_k)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "tokenizer.json").write_text('{"version": "1.0"}')
    if manifest:
        manifest_for(sources, top_k, base=base, parent=parent).save(out)
    return out


def manifest_for(sources: list[Path], top_k: int = 2, base: Path | None = None,
                 parent: str | None = None, with_hashes: bool = True) -> Manifest:
    records = [ExpertRecord(index=i, domain=DOMAINS[i % len(DOMAINS)], source=str(s),
                            sha256=expert_hashes(s)[0] if with_hashes else {})
               for i, s in enumerate(sources)]
    return Manifest(project_version="0.1.0", num_layers=DIMS["num_hidden_layers"],
                    num_experts=len(sources), top_k=top_k, dtype="float32", experts=records,
                    base_model=ModelSource(source=str(base)) if base else None,
                    parent=ModelSource(source=parent) if parent else None)


@dataclass
class Kit:
    base: Path
    experts: list[Path]
    fused: Path
    per_expert: Path
    bare: Path  # per-expert layout, no mofe.json


def build_kit(root: Path) -> Kit:
    base = write_llama(root / "base", seed=0)
    experts = [write_llama(root / f"expert-{i}", seed=10 + i) for i in range(4)]
    return Kit(base=base, experts=experts,
               fused=write_mixtral(root / "moe-fused", experts, "fused", base=base),
               per_expert=write_mixtral(root / "moe-per-expert", experts, "per_expert",
                                        base=base),
               bare=write_mixtral(root / "moe-bare", experts, "per_expert", manifest=False))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)
