"""Write Mixtral weights in the per-expert layout vLLM 0.32's native loader reads (torch side).

transformers 5 keeps Mixtral experts fused in memory (mlp.experts.gate_up_proj [E, 2I, H],
mlp.experts.down_proj [E, H, I]) and mergekit writes that layout; vLLM reads
block_sparse_moe.experts.{e}.w1/w2/w3.weight. The split is pure slicing (w1 = first I rows of
gate_up_proj, w3 = the rest), so expert bytes are unchanged. model_registry.layout does the
same rewrite torch-free on files; here we already hold tensors, so we save this layout directly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

_GATE = re.compile(r"^model\.layers\.(\d+)\.mlp\.gate\.weight$")
_EXPERTS = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
WEIGHTS_FILE = "model.safetensors"


def to_per_expert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if m := _GATE.match(name):
            out[f"model.layers.{m[1]}.block_sparse_moe.gate.weight"] = t
        elif m := _EXPERTS.match(name):
            prefix = f"model.layers.{m[1]}.block_sparse_moe.experts"
            for e in range(t.shape[0]):
                if m[2] == "gate_up_proj":
                    half = t.shape[1] // 2
                    out[f"{prefix}.{e}.w1.weight"] = t[e, :half].contiguous()
                    out[f"{prefix}.{e}.w3.weight"] = t[e, half:].contiguous()
                else:
                    out[f"{prefix}.{e}.w2.weight"] = t[e].contiguous()
        else:
            out[name] = t.contiguous()
    return out


_PER_EXPERT = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.(?:experts\.(\d+)\.(w1|w2|w3)|gate)\.weight$")


def to_fused(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of to_per_expert: transformers 5's in-memory Mixtral parameter names."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for name, t in state.items():
        m = _PER_EXPERT.match(name)
        if m is None:
            out[name] = t
        elif m[2] is None:
            out[f"model.layers.{m[1]}.mlp.gate.weight"] = t
        else:
            experts.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = t
    for layer, by_expert in experts.items():
        order = [by_expert[e] for e in sorted(by_expert)]
        prefix = f"model.layers.{layer}.mlp.experts"
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([w["w1"], w["w3"]]) for w in order])
        out[f"{prefix}.down_proj"] = torch.stack([w["w2"] for w in order])
    return out


def save_model_per_expert(model, out: Path, dtype: torch.dtype) -> None:
    """config.json + generation_config.json + one safetensors file in vLLM's layout."""
    out.mkdir(parents=True, exist_ok=True)
    state = {n: t.detach().to(dtype) for n, t in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    model.config.dtype = dtype
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    save_file(to_per_expert(state), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
