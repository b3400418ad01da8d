"""The checkpoint format (model_registry.checkpoint, docs/format.md): both layouts, their
conversion, canonical hashes and the dtype rule. vLLM reading both layouts alike is
tests/batch/test_layouts_agree.py (the suite's fused server vs. its per-expert scorer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from model_registry.checkpoint import (
    CheckpointError,
    convert_checkpoint,
    convert_dtype,
    expert_hashes,
    layout_of,
    read_all_headers,
    to_fused,
    to_per_expert,
    vllm_loadable,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fused_mixtral(tmp_path_factory) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        num_local_experts=3, num_experts_per_tok=2)
    path = tmp_path_factory.mktemp("fused") / "ckpt"
    model = MixtralForCausalLM(cfg).eval()
    model.save_pretrained(path)  # a new model saves per-expert (docs/format.md)...
    # ...so write transformers' in-memory (fused) names ourselves, as mergekit does
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_fused_and_converted_agree(fused_mixtral: Path, tmp_path: Path):
    import torch
    from transformers import MixtralForCausalLM

    assert layout_of(fused_mixtral) == "fused" and not vllm_loadable(fused_mixtral)
    out = convert_checkpoint(fused_mixtral, tmp_path / "per_expert")
    assert layout_of(out) == "per_expert" and vllm_loadable(out)
    names = read_all_headers(out)
    assert "model.layers.1.block_sparse_moe.experts.2.w3.weight" in names
    assert names["model.layers.1.block_sparse_moe.experts.2.w2.weight"].shape == (32, 48)
    # canonical per-expert hashes do not depend on the layout
    assert expert_hashes(fused_mixtral) == expert_hashes(out)
    assert len(expert_hashes(out)) == 3 and len(expert_hashes(out)[0]) == 2 * 3
    # and transformers computes the same logits from both files
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    with torch.no_grad():
        a = MixtralForCausalLM.from_pretrained(fused_mixtral).eval()(ids).logits
        b = MixtralForCausalLM.from_pretrained(out).eval()(ids).logits
    assert torch.equal(a, b)
    # converting the converted checkpoint is the identity on tensors
    again = convert_checkpoint(out, tmp_path / "again")
    assert expert_hashes(again) == expert_hashes(out)


def test_round_trip_to_fused_restores_every_tensor(fused_mixtral: Path, tmp_path: Path):
    from safetensors.numpy import load_file

    per = convert_checkpoint(fused_mixtral, tmp_path / "per")
    back = convert_checkpoint(per, tmp_path / "back", "fused")
    a, b = (load_file(str(p / "model.safetensors")) for p in (fused_mixtral, back))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_in_memory_conversion_matches_the_files(fused_mixtral: Path, tmp_path: Path):
    """The torch path (resume, vLLM load_weights) uses the same table as the file path."""
    import torch
    from safetensors.torch import load_file

    fused = load_file(str(fused_mixtral / "model.safetensors"))
    on_disk = load_file(str(convert_checkpoint(fused_mixtral, tmp_path / "p") /
                            "model.safetensors"))
    split = to_per_expert(fused)
    assert split.keys() == on_disk.keys()
    assert all(torch.equal(split[k], on_disk[k]) for k in split)
    refused = to_fused(on_disk, torch.stack, torch.cat)
    assert refused.keys() == fused.keys()
    assert all(torch.equal(refused[k], fused[k]) for k in fused)


def test_bf16_and_fp16_conversion_is_torchs(tmp_path: Path):
    """The frozen claim's dtype rule: bit-for-bit what torch's .to() gives."""
    import torch

    special = torch.tensor([0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), float("nan"),
                            3.4028235e38, 1e-40, -1e-45, 65504.0, 65520.0, 1.00390625,
                            1.01171875, 6e-8])  # overflow, subnormals, ties to even
    ties = torch.tensor([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0xFF800001],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)
    values = torch.cat([special, ties, torch.randn(5000) * 10 ** torch.randint(-8, 8, (5000,))])
    for src, dst in [("F32", "BF16"), ("F32", "F16"), ("BF16", "F32"), ("F16", "BF16"),
                     ("BF16", "F16"), ("F16", "F32")]:
        torch_dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
        x = values.to(torch_dtype[src])
        if src != "F32":  # torch's NaN bytes differ by path; NaN payloads are not compared
            x = x[~x.isnan()]
        want = x.to(torch_dtype[dst]).view(torch.uint8).numpy().tobytes()
        got = convert_dtype(x.view(torch.uint8).numpy().tobytes(), src, dst)
        assert got == want, (src, dst)
    with pytest.raises(CheckpointError, match="I32"):
        convert_dtype(b"\0" * 4, "I32", "F32")


def test_convert_refuses_non_mixtral_and_writes_nothing(tmp_path: Path):
    src = tmp_path / "llama"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type"):
        convert_checkpoint(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["llama"]


def test_truncated_file_is_named(tmp_path: Path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_all_headers(tmp_path)


# Tensor names of either layout; only model_registry/checkpoint.py may spell them out.
_FORMAT_NAMES = re.compile(r"block_sparse_moe\.(experts|gate)|gate_up_proj|experts\.down_proj"
                           r"|\bw[123]\.weight|mlp\.experts|mlp\.gate\.weight|[\"']w[123][\"']")


def test_one_production_module_spells_the_format():
    found = []
    for pkg in ("model_registry", "training", "mofe_serve", "mofe_cli"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() == "model_registry/checkpoint.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if _FORMAT_NAMES.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []
