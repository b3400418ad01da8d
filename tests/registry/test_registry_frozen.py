"""The frozen claim of mofe.json is checked on register: against its hashes and live sources."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from model_registry.checkpoint import parse_name, tensor_sha256
from model_registry.manifest import Manifest
from training.test_models import manifest_for, write_llama, write_mixtral


def _experts(info):
    return {e["index"]: e for e in info.frozen_details["experts"]}


def test_faithful_checkpoint_passes_both_checks(registry, kit):
    info = registry.register(kit.fused, "moe")
    assert info.frozen_check == "passed"
    for e in _experts(info).values():
        assert e["manifest"]["ok"] and e["manifest"]["compared"] == 6  # 2 layers x w1/w2/w3
        assert e["source_check"]["status"] == "match"


def test_a_changed_expert_fails_and_is_named(registry, kit, tmp_path):
    # expert 2 of this MoE is not the FFN its manifest claims (as if it had been trained)
    impostor = write_llama(tmp_path / "impostor", seed=99)
    sources = [kit.experts[0], kit.experts[1], impostor, kit.experts[3]]
    ckpt = write_mixtral(tmp_path / "moe", sources, "fused", manifest=False)
    manifest_for(kit.experts).save(ckpt)
    info = registry.register(ckpt, "moe")
    assert info.frozen_check == "failed"
    experts = _experts(info)
    assert experts[2]["manifest"]["n_mismatched"] == 6
    assert experts[2]["source_check"]["status"] == "mismatch"
    assert all(experts[i]["manifest"]["ok"] for i in (0, 1, 3))
    assert "expert(s) 2 differ" in info.frozen_details["summary"]


def test_sources_alone_can_pass_the_check(registry, kit, copy_of):
    ckpt = copy_of(kit.per_expert)
    manifest_for(kit.experts, with_hashes=False).save(ckpt)
    info = registry.register(ckpt, "moe")
    assert info.frozen_check == "passed"
    assert all("manifest" not in e and e["source_check"]["status"] == "match"
               for e in _experts(info).values())


def test_no_hashes_and_hub_sources_is_unchecked(registry, kit, copy_of):
    ckpt = copy_of(kit.per_expert)
    m = manifest_for(kit.experts, with_hashes=False)
    for rec in m.experts:
        rec.source = f"some-org/expert-{rec.index}"
    m.save(ckpt)
    info = registry.register(ckpt, "moe")
    assert info.frozen_check == "unchecked"
    assert "hub ids are not fetched" in _experts(info)[0]["source_check"]["detail"]


def test_fp32_checkpoint_does_not_match_an_fp16_copy_of_its_source(registry, kit, copy_of):
    """The dtype rule: the source converted to the checkpoint's dtype must equal it. fp32
    weights cannot come from an fp16 source, so this is a mismatch, not a skip."""
    half = copy_of(kit.experts[0], "expert-0-fp16")
    tensors = {k: v.astype(np.float16) for k, v in
               load_file(str(half / "model.safetensors")).items()}
    save_file(tensors, str(half / "model.safetensors"))
    ckpt = copy_of(kit.per_expert)
    m = manifest_for(kit.experts, with_hashes=False)
    m.experts[0].source = str(half)
    m.save(ckpt)
    info = registry.register(ckpt, "moe")
    check = _experts(info)[0]["source_check"]
    assert check["status"] == "mismatch" and check["n_mismatched"] == 6
    assert info.frozen_check == "failed"
    assert all(_experts(info)[i]["source_check"]["status"] == "match" for i in (1, 2, 3))


def test_registered_source_is_found_by_registry_ref(registry, kit, copy_of):
    registry.register(kit.experts[1], "gen-expert")
    ckpt = copy_of(kit.per_expert)
    m = manifest_for(kit.experts, with_hashes=False)
    m.experts[1].source, m.experts[1].registry_ref = "some-org/general", "gen-expert@1"
    m.save(ckpt)
    info = registry.register(ckpt, "moe")
    check = _experts(info)[1]["source_check"]
    assert check["status"] == "match"
    assert check["path"] == str(registry.resolve("gen-expert@1"))


def test_relative_source_paths_resolve_against_the_checkpoint(registry, kit, copy_of):
    experts = [copy_of(e) for e in kit.experts]  # siblings of the checkpoint below
    ckpt = write_mixtral(experts[0].parent / "moe-relative", experts, "per_expert",
                         manifest=False)
    m = manifest_for(experts, with_hashes=False)
    for rec in m.experts:
        rec.source = f"../{experts[rec.index].name}"
    m.save(ckpt)
    info = registry.register(ckpt, "moe")
    assert info.frozen_check == "passed"
    assert Manifest.model_validate(info.manifest).experts[0].source == "../expert-0"


def _bf16_mixtral(out: Path, kit) -> Path:
    """A bf16 MoFE checkpoint made from the fp32 sources by torch's own cast (as mergekit does
    with dtype bfloat16), with a manifest whose hashes are of the sources cast to bf16."""
    import torch
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    ckpt = write_mixtral(out, kit.experts, "fused", manifest=False)
    state = load_torch(str(ckpt / "model.safetensors"))
    save_torch({k: v.to(torch.bfloat16) for k, v in state.items()},
               str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    m = manifest_for(kit.experts, with_hashes=False)
    for rec, src in zip(m.experts, kit.experts, strict=True):
        state = load_torch(str(src / "model.safetensors"))
        rec.sha256 = {}
        for name, t in state.items():
            p = parse_name(name)
            if p is not None and p.kind == "dense":
                b = t.to(torch.bfloat16).contiguous()
                rec.sha256[f"{p.layer}.{p.proj}"] = tensor_sha256(
                    "BF16", tuple(b.shape), b.view(torch.uint8).numpy().tobytes())
    m.dtype = "bfloat16"
    m.save(ckpt)
    return ckpt


def _three_verdicts(registry, ckpt: Path, name: str):
    """(mofe verify, registration, mofe registry verify) on one checkpoint."""
    from click.testing import CliRunner

    from model_registry.verify import verify
    from training.cli import verify_cli

    cli = CliRunner().invoke(verify_cli, [str(ckpt)])
    info = registry.register(ckpt, name)
    report = verify(registry, info.ref)
    return cli, info, report


def test_bf16_checkpoint_from_fp32_sources_one_verdict(registry, kit, tmp_path):
    ckpt = _bf16_mixtral(tmp_path / "moe-bf16", kit)
    cli, info, report = _three_verdicts(registry, ckpt, "moe-bf16")
    assert cli.exit_code == 0, cli.output
    assert "bit-identical to its source" in cli.output
    assert (info.frozen_check, info.frozen_details["basis"]) == ("passed", "sources")
    assert all(e["source_check"]["status"] == "match" and e["manifest"]["ok"]
               for e in _experts(info).values())
    assert (report.frozen_check, report.frozen_basis, report.exit_code) == \
        ("passed", "sources", 0)
    assert report.frozen_summary == info.frozen_details["summary"] == \
        "4 expert(s) bit-identical to their sources"


def test_unreachable_sources_are_manifest_only_everywhere(registry, kit, tmp_path, copy_of):
    """Without its sources the claim rests on mofe.json's hashes: all three say so, none says
    "bit-identical to its source", and both CLIs exit 3."""
    sources = [copy_of(e, f"gone-{i}") for i, e in enumerate(kit.experts)]
    ckpt = write_mixtral(tmp_path / "moe-gone", sources, "fused")
    for s in sources:
        shutil.rmtree(s)
    cli, info, report = _three_verdicts(registry, ckpt, "moe-gone")
    assert cli.exit_code == 3, cli.output
    assert "bit-identical to its source" not in cli.output
    assert "mofe.json only" in cli.output
    assert (info.frozen_check, info.frozen_details["basis"]) == ("passed", "manifest")
    assert (report.frozen_check, report.frozen_basis, report.exit_code) == \
        ("passed", "manifest", 3)
    assert report.frozen_summary == info.frozen_details["summary"]
    assert "bit-identity to the source is not confirmed" in report.frozen_summary
    no_source = CliRunner().invoke(verify_cli_cmd(), [str(kit.fused), "--no-source"])
    assert no_source.exit_code == 3 and "bit-identical to its source" not in no_source.output


def verify_cli_cmd():
    from training.cli import verify_cli

    return verify_cli
