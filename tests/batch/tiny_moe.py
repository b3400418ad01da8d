"""A tiny MoFE-style Mixtral assembled from the kit: the base's attention/embeddings/norms/
lm_head, each expert's FFN from a kit expert, and a random router (N(0, 0.5), seeded).

Unlike a random Mixtral its option log-likelihoods differ clearly (the FFNs are trained), so
prediction agreement between engines is a meaningful check, and its routing depends on the
tokens. Written by save_pretrained of a new model, so in the per-expert layout
(docs/format.md), with a mofe.json listing expert domains.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# kit experts in training/kit.py TOPICS order
EXPERTS = [("pharmacology", "medical"), ("geography", "general"), ("anatomy", "medical"),
           ("cooking", "general")]
TOP_K = 2


def build_tiny_moe(kit: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaConfig, MixtralConfig, MixtralForCausalLM

    from model_registry.manifest import ExpertRecord, Manifest

    base_cfg = LlamaConfig.from_pretrained(kit / "base")
    config = MixtralConfig(
        vocab_size=base_cfg.vocab_size, hidden_size=base_cfg.hidden_size,
        intermediate_size=base_cfg.intermediate_size,
        num_hidden_layers=base_cfg.num_hidden_layers,
        num_attention_heads=base_cfg.num_attention_heads,
        num_key_value_heads=base_cfg.num_key_value_heads,
        max_position_embeddings=base_cfg.max_position_embeddings, rms_norm_eps=1e-6,
        num_local_experts=len(EXPERTS), num_experts_per_tok=TOP_K, tie_word_embeddings=False,
        bos_token_id=base_cfg.bos_token_id, eos_token_id=base_cfg.eos_token_id,
        pad_token_id=base_cfg.pad_token_id, dtype="float32")
    model = MixtralForCausalLM(config).float().eval()
    base = load_file(kit / "base" / "model.safetensors")
    experts = [load_file(kit / "experts" / name / "model.safetensors") for name, _ in EXPERTS]
    state = model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    for key in state:
        if ".mlp.gate." in key:
            state[key] = torch.randn(state[key].shape, generator=gen) * 0.5
        elif key.endswith("mlp.experts.gate_up_proj"):
            prefix = key.rsplit(".mlp.", 1)[0]
            state[key] = torch.stack([torch.cat([e[f"{prefix}.mlp.gate_proj.weight"],
                                                 e[f"{prefix}.mlp.up_proj.weight"]])
                                      for e in experts])
        elif key.endswith("mlp.experts.down_proj"):
            prefix = key.rsplit(".mlp.", 1)[0]
            state[key] = torch.stack([e[f"{prefix}.mlp.down_proj.weight"] for e in experts])
        else:
            state[key] = base[key]
    model.load_state_dict(state)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(kit / "base").save_pretrained(tmp)
    Manifest(project_version="0.1.0", num_layers=config.num_hidden_layers,
             num_experts=len(EXPERTS), top_k=TOP_K, dtype="float32",
             experts=[ExpertRecord(source=str(kit / "experts" / name), index=i, domain=domain)
                      for i, (name, domain) in enumerate(EXPERTS)]).save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
