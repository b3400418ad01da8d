"""The frozen claim of mofe.json is checked on register: against its hashes and live sources."""

from __future__ import annotations

import numpy as np
from registry_ckpts import manifest_for, write_llama, write_mixtral
from safetensors.numpy import load_file, save_file

from model_registry.manifest import Manifest


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


def test_source_in_another_dtype_is_not_compared(registry, kit, copy_of):
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
    assert check["status"] == "skipped" and "dtype ['F16'] differs" in check["detail"]
    assert info.frozen_check == "passed"  # the other three matched


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
