"""The one builder of test models, for the test suite, benchmarks and the demo.

Every model is written by production code: mergekit through `training.merge` (the kit MoE),
transformers' `save_pretrained` (the random Mixtral), and the layout is chosen with the
format module's converter (`model_registry.checkpoint.convert_checkpoint`, docs/format.md).
Nothing here states a tensor name or a slice.

- `build_kit_moe`: the kit's base and four trained experts merged into a MoFE Mixtral
  (4 layers, 4 experts, top-2, fp32). Its FFNs are trained, so predictions are meaningful,
  and its random router (mergekit's `random` gate mode, N(0, 1), seeded) makes routing vary
  clearly by token, which fp32 comparisons with transformers need.
- `build_kit_family`: N variants of one kit MoE, each trained from the same merge by the
  production training path (`training.train.run_training`, method mofe: experts frozen) for
  a few steps with its own seed, so the variants share every expert tensor and differ in
  embeddings, attention, norms, router and lm_head. For family serving tests.
- `build_random_mixtral`: a randomly initialised Mixtral of any size with the kit's
  tokenizer, for speed benchmarks and shape-level tests.
- `write_llama` / `write_mixtral` / `build_format_kit`: format-level checkpoints written with
  numpy + safetensors only (no torch, not meant for an engine), for registry and deploy-script
  tests. Their experts are byte-exact copies of dense "source expert" FFNs, so a faithful
  mofe.json passes the frozen check and flipping any expert byte fails it. Tensor names and
  stacking come from the format module.

The engine-ready models write a mofe.json naming each expert's domain.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .kit import TOPICS, KitSizes, _quiet_transformers, _train_tokenizer

# The kit MoE's shape: the kit's four experts in TOPICS order on the kit's 4-layer base.
NUM_EXPERTS = 4
TOP_K = 2
NUM_LAYERS = KitSizes().num_layers
DOMAINS = [domain for _, domain in TOPICS[:NUM_EXPERTS]]
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


def build_kit_family(kit: Path, out: Path, variants: int = 3, steps: int = 4,
                     learning_rate: float = 3e-3, merge_seed: int = 0) -> list[Path]:
    """`out/merged` (the kit MoE, fused layout) and `out/variant-<i>` for i < `variants`:
    each a real MoFE training run (`run_training`, method mofe) of `steps` steps from that
    merge, seed i + 1. The learning rate is high so a few steps move the variants clearly
    apart (their greedy outputs differ); the frozen experts stay bit-identical."""
    from .config import load_config
    from .train import run_training

    out = Path(out)
    merged = build_kit_moe(kit, out / "merged", seed=merge_seed)
    cfg = load_config(Path(kit) / "mofe.yaml")
    paths = []
    for i in range(variants):
        target = out / f"variant-{i}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(target.with_name(target.name + ".work"), ignore_errors=True)
        run = cfg.model_copy(deep=True, update={
            "model": str(merged), "merge": None, "seed": i + 1, "output_dir": str(target),
            "training": cfg.training.model_copy(update={
                "max_steps": steps, "learning_rate": learning_rate, "warmup_steps": 0,
                "lr_scheduler": "constant_with_warmup", "save_every": steps,
                "eval_every": steps, "log_every": steps})})
        paths.append(run_training(run, console=_quiet_console()))
        shutil.rmtree(target.with_name(target.name + ".work"), ignore_errors=True)
    return paths


def _quiet_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


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


# --- format-level checkpoints: numpy + safetensors only ----------------------------------

FORMAT_DIMS = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
               "vocab_size": 64}


def _rand(rng, *shape: int):
    import numpy as np

    return rng.standard_normal(shape).astype(np.float32)


def _common(rng) -> dict:
    """Embeddings, lm_head, norms and attention: everything but the FFNs."""
    import numpy as np

    h, v = FORMAT_DIMS["hidden_size"], FORMAT_DIMS["vocab_size"]
    out = {"model.embed_tokens.weight": _rand(rng, v, h), "lm_head.weight": _rand(rng, v, h),
           "model.norm.weight": np.ones(h, np.float32)}
    for layer in range(FORMAT_DIMS["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out[f"{p}.input_layernorm.weight"] = np.ones(h, np.float32)
        out[f"{p}.post_attention_layernorm.weight"] = np.ones(h, np.float32)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}.self_attn.{proj}.weight"] = _rand(rng, h, h)
    return out


def _format_config(model_type: str, **extra) -> dict:
    arch = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}[model_type]
    return {"model_type": model_type, "architectures": [arch], "num_attention_heads": 2,
            "num_key_value_heads": 2, "torch_dtype": "float32", "tie_word_embeddings": False,
            **FORMAT_DIMS, **extra}


def write_llama(out: Path, seed: int) -> Path:
    """A dense Llama "source expert" with random weights."""
    import numpy as np
    from safetensors.numpy import save_file

    from model_registry.checkpoint import DENSE_PROJ, PROJECTIONS, dense_name

    rng = np.random.default_rng(seed)
    h, i = FORMAT_DIMS["hidden_size"], FORMAT_DIMS["intermediate_size"]
    shapes = {p: (h, i) if p == DENSE_PROJ["down_proj"] else (i, h) for p in PROJECTIONS}
    tensors = _common(rng)
    for layer in range(FORMAT_DIMS["num_hidden_layers"]):
        tensors |= {dense_name(layer, p): _rand(rng, *shape) for p, shape in shapes.items()}
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(_format_config("llama"), indent=2))
    return out


def write_mixtral(out: Path, sources: list[Path], layout: str = "fused", top_k: int = 2,
                  seed: int = 100, manifest: bool = True, base: Path | None = None,
                  parent: str | None = None) -> Path:
    """A Mixtral whose expert e is the FFN of sources[e] (copied bytes), plus a mofe.json."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from model_registry.checkpoint import (
        PROJECTIONS,
        dense_name,
        per_expert_name,
        router_name,
        to_fused,
    )

    rng = np.random.default_rng(seed)
    dense = [load_file(str(s / "model.safetensors")) for s in sources]
    e, h = len(sources), FORMAT_DIMS["hidden_size"]
    tensors = _common(rng)
    for layer in range(FORMAT_DIMS["num_hidden_layers"]):
        tensors[router_name(layer, "per_expert")] = _rand(rng, e, h)
        for x, d in enumerate(dense):
            tensors |= {per_expert_name(layer, x, p): d[dense_name(layer, p)]
                        for p in PROJECTIONS}
    if layout == "fused":
        tensors = to_fused(tensors, np.stack, np.concatenate)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = _format_config("mixtral", num_local_experts=e, num_experts_per_tok=top_k)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "tokenizer.json").write_text('{"version": "1.0"}')
    if manifest:
        manifest_for(sources, top_k, base=base, parent=parent).save(out)
    return out


def manifest_for(sources: list[Path], top_k: int = 2, base: Path | None = None,
                 parent: str | None = None, with_hashes: bool = True):
    """The mofe.json of a Mixtral built from `sources` (hashes from the format module)."""
    from model_registry.checkpoint import expert_hashes
    from model_registry.manifest import ExpertRecord, Manifest, ModelSource

    records = [ExpertRecord(index=i, domain=DOMAINS[i % len(DOMAINS)], source=str(s),
                            sha256=expert_hashes(s)[0] if with_hashes else {})
               for i, s in enumerate(sources)]
    return Manifest(project_version="0.1.0", num_layers=FORMAT_DIMS["num_hidden_layers"],
                    num_experts=len(sources), top_k=top_k, dtype="float32", experts=records,
                    base_model=ModelSource(source=str(base)) if base else None,
                    parent=ModelSource(source=parent) if parent else None)


@dataclass
class FormatKit:
    base: Path
    experts: list[Path]
    fused: Path
    per_expert: Path
    bare: Path  # per-expert layout, no mofe.json


def build_format_kit(root: Path, seed: int = 0) -> FormatKit:
    """A dense base, four source experts and Mixtrals of them in both layouts."""
    base = write_llama(root / "base", seed=seed)
    experts = [write_llama(root / f"expert-{i}", seed=seed + 10 + i) for i in range(4)]
    return FormatKit(base=base, experts=experts,
                     fused=write_mixtral(root / "moe-fused", experts, "fused", base=base),
                     per_expert=write_mixtral(root / "moe-per-expert", experts, "per_expert",
                                              base=base),
                     bare=write_mixtral(root / "moe-bare", experts, "per_expert",
                                        manifest=False))


# --- random dense experts of any shape, for memory benchmarks and structural tests ------

# TinyLlama-1.1B's shape, the paper's setting (x 4 experts: 3.38B parameters, 0.34B trainable)
TINYLLAMA = KitSizes(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
                     num_heads=32, num_kv_heads=4, max_positions=2048)


def build_random_experts(root: Path, sizes: KitSizes = KitSizes(), experts: int = NUM_EXPERTS,
                         dtype: str = "bfloat16", seed: int = 0, rows: int = 48) -> Path:
    """A random dense Llama base of `sizes`, `experts` dense experts (the base with its FFNs
    drawn again per expert, as fine-tuned experts share the base's shape), the kit tokenizer,
    a chat data file and `mofe.yaml`, a training config that merges them (mergekit,
    `gate_mode: random`, top-2, `dtype`) and trains 2 steps of batch 1 x 128 tokens.
    Returns the config's path. The config's vocabulary is `sizes.vocab_size` even where the
    kit tokenizer has fewer tokens, so the parameter count is the shape's."""
    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from .kit_data import load_facts, topic_text

    _quiet_transformers()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(root / "tokenizer", min(sizes.vocab_size, 4096))
    if len(tokenizer) > sizes.vocab_size:
        raise ValueError(f"vocab_size {sizes.vocab_size} is smaller than the kit tokenizer")
    config = LlamaConfig(
        vocab_size=sizes.vocab_size, hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size, num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads, num_key_value_heads=sizes.num_kv_heads,
        max_position_embeddings=sizes.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(config, dtype=getattr(torch, dtype)).eval()
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    names = []
    for i in range(experts):
        name = f"{TOPICS[i % len(TOPICS)][0]}-{i}"
        gen = torch.Generator().manual_seed(seed + 1 + i)
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if ".mlp." in pname:  # a dense FFN: gate/up/down projections
                    param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype)
                                * config.initializer_range)
        model.save_pretrained(root / "experts" / name)
        tokenizer.save_pretrained(root / "experts" / name)
        names.append(name)
    del model

    lines = topic_text(load_facts(), "pharmacology", random.Random(seed), repeats=1)
    data = root / "data" / "instruct.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    with open(data, "w") as fh:
        for i in range(rows):
            fact = lines[i % len(lines)]
            msgs = [{"role": "user", "content": f"Tell me a fact ({i})."},
                    {"role": "assistant", "content": fact}]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    cfg = {
        "method": "mofe", "seed": seed, "output_dir": "checkpoints/mofe",
        "merge": {"base_model": "base", "output": "merged", "gate_mode": "random",
                  "experts_per_token": TOP_K, "dtype": dtype,
                  "experts": [{"source": f"experts/{n}", "domain": TOPICS[i % len(TOPICS)][1]}
                              for i, n in enumerate(names)]},
        "data": {"train": [{"path": "data/instruct.jsonl", "format": "chat"}],
                 "eval_fraction": 0.0, "max_length": 128},
        "training": {"max_steps": 2, "batch_size": 1, "learning_rate": 3.0e-5,
                     "save_every": 2, "log_every": 1, "precision": "bf16"},
    }
    path = root / "mofe.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
