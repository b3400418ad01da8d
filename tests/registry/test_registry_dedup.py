"""Frozen experts stored once: versions share expert blobs through hard links; `delete` frees a
blob only when no version uses it; files are readable by all; registration streams."""

from __future__ import annotations

import errno
import json
import os
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from registry_support import flip_byte
from safetensors.numpy import save_file

from model_registry.cas import OWN_WEIGHTS, STORE_INDEX, read_index
from model_registry.checkpoint import expert_hashes, per_expert_name, router_name
from model_registry.errors import InvalidCheckpointError, RegistryError
from model_registry.registry import Registry
from model_registry.verify import verify
from training.test_models import write_mixtral

EXPERT_TENSORS = 4 * 2 * 3  # experts x layers x (w1, w2, w3) of the format kit


def _variant(kit, tmp_path: Path, seed: int) -> Path:
    """The kit's experts with other non-expert tensors: what MoFE training produces."""
    return write_mixtral(tmp_path / f"variant-{seed}", kit.experts, "fused", seed=seed)


def _shards(path: Path) -> dict[str, Path]:
    return {p.name: p for p in path.iterdir() if p.name.startswith("model.layers.")}


def _disk_bytes(root: Path) -> int:
    """Bytes on disk under root, each inode counted once (hard links are one file)."""
    seen, total = set(), 0
    for p in root.rglob("*"):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total


def test_variants_share_every_expert_blob(registry, kit, tmp_path):
    a = registry.register(kit.fused, "moe")
    b = registry.register(_variant(kit, tmp_path, 7), "moe-med")
    c = registry.register(kit.per_expert, "moe")  # same experts, other layout: same blobs
    assert len(list(registry.artifacts.blobs.keys())) == EXPERT_TENSORS
    paths = [registry.resolve(i.ref) for i in (a, b, c)]
    for name, shard in _shards(paths[0]).items():
        assert all(os.path.samefile(shard, p / name) for p in paths[1:])
        assert shard.stat().st_nlink == 1 + 3  # the blob and three versions: one inode
    # the variant's own tensors differ, its experts do not
    assert (paths[0] / OWN_WEIGHTS).read_bytes() != (paths[1] / OWN_WEIGHTS).read_bytes()
    assert registry.meta.expert_hashes("moe-med", 1) == expert_hashes(kit.fused)
    index = read_index(paths[1])
    assert len(index.blobs) == EXPERT_TENSORS and "model.embed_tokens.weight" in index.own_tensors
    # On disk: each version's own files, plus the expert blobs once (not three times).
    blob_bytes = _disk_bytes(registry.root / "blobs")
    own = [sum(f.size for f in i.files if not f.path.startswith("model.layers.")) for i in
           (a, b, c)]
    assert _disk_bytes(registry.root / "artifacts") == blob_bytes + sum(own)
    assert sum(i.total_bytes for i in (a, b, c)) == 3 * blob_bytes + sum(own)


def test_delete_frees_a_blob_only_when_no_version_uses_it(registry, kit, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    registry.register(kit.fused, "moe")
    registry.register(_variant(kit, tmp_path, 7), "moe-med")
    registry.register(kit.experts[0], "med-expert")  # a dense model: its FFN blobs are its own
    blobs = set(registry.artifacts.blobs.keys())
    assert len(blobs) == EXPERT_TENSORS + 2 * 3
    registry.delete("moe@1")
    assert set(registry.artifacts.blobs.keys()) == blobs and registry.freed == []
    assert verify(registry, "moe-med").ok
    path = registry.resolve("moe-med")
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():  # the survivor loads, and computes what its source computes
        got = AutoModelForCausalLM.from_pretrained(path).eval()(ids).logits
        want = AutoModelForCausalLM.from_pretrained(tmp_path / "variant-7").eval()(ids).logits
    assert torch.equal(got, want)
    registry.delete("moe-med@1")
    assert len(registry.freed) == EXPERT_TENSORS
    assert len(list(registry.artifacts.blobs.keys())) == 2 * 3  # the dense expert's FFN
    registry.delete("med-expert@1")
    assert list(registry.artifacts.blobs.keys()) == []
    assert list((registry.root / "blobs").iterdir()) == []  # no empty folders left either


def test_files_are_readable_by_all_whatever_the_source_modes(kit, copy_of, tmp_path):
    ckpt = copy_of(kit.per_expert)
    for p in ckpt.iterdir():
        p.chmod(0o600)
    ckpt.chmod(0o700)
    old = os.umask(0o077)
    try:
        with Registry(tmp_path / "new-root") as registry:
            registry.register(ckpt, "moe")
            path = registry.resolve("moe")
    finally:
        os.umask(old)
    for p in [registry.root, registry.root / "artifacts", path, path.parent, *path.iterdir()]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o755, p
        elif p.name.startswith("model.layers."):
            assert mode == 0o444, p  # a shared blob: not writable through any version
        else:
            assert mode == 0o644, p
    for d in (registry.root / "blobs").rglob("*"):
        assert stat.S_IMODE(d.stat().st_mode) == (0o755 if d.is_dir() else 0o444), d


def test_dense_llama_and_non_mofe_mixtral_register(registry, kit, tmp_path):
    """No special case: their FFN / expert tensors are blobs, shared only on equal hashes."""
    base = registry.register(kit.base, "base")
    expert = registry.register(kit.experts[0], "med-expert")
    again = registry.register(kit.experts[0], "med-expert")
    assert (base.layout, base.converted, base.vllm_loadable) == ("dense", False, True)
    assert len(list(registry.artifacts.blobs.keys())) == 2 * (2 * 3)  # base and one expert
    assert all(os.path.samefile(p, registry.resolve(again.ref) / n)
               for n, p in _shards(registry.resolve(expert.ref)).items())
    plain = registry.register(kit.bare, "plain-mixtral")  # no mofe.json
    assert plain.frozen_check == "unchecked" and verify(registry, plain.ref).ok


def test_cross_device_link_is_a_clear_error_and_writes_nothing(registry, kit, monkeypatch):
    def refuse(src, dst, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(RegistryError, match="different filesystems.*a copy would store the "
                                            "experts twice"):
        registry.register(kit.fused, "moe")
    monkeypatch.undo()
    assert registry.list_models() == [] and os.listdir(registry.root / "tmp") == []


def test_a_damaged_blob_is_refused_not_spread(registry, kit, tmp_path):
    registry.register(kit.fused, "moe")
    shard = sorted(_shards(registry.resolve("moe")).values())[0]
    flip_byte(shard, shard.stat().st_size - 1)  # damage the shared blob
    with pytest.raises(InvalidCheckpointError, match="blob .* does not hold the tensor"):
        registry.register(_variant(kit, tmp_path, 7), "moe-med")
    report = verify(registry, "moe")
    assert not report.ok and any("hash differs" in p for p in report.problems)


def test_verify_names_a_shard_that_is_no_longer_the_blob(registry, kit):
    registry.register(kit.per_expert, "moe")
    path = registry.resolve("moe")
    shard = sorted(_shards(path).values())[0]
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data)  # same bytes, a separate copy: the store no longer shares it
    assert f"{shard.name}: not a link to blob" in " ".join(verify(registry, "moe").problems)
    blob = registry.artifacts.blob_path(read_index(path).blobs[shard.name].blob)
    blob.unlink()
    assert "is missing from the store" in " ".join(verify(registry, "moe").problems)


def test_store_index_is_recorded_and_checked(registry, kit):
    info = registry.register(kit.per_expert, "moe")
    assert STORE_INDEX in {f.path for f in info.files}
    flip_byte(registry.resolve("moe") / STORE_INDEX, 5)
    assert not verify(registry, "moe").ok


def test_registration_holds_one_tensor_at_a_time(registry, tmp_path):
    """Memory is a feature: 8 experts of 2 MiB tensors (96 MiB of experts) register with a
    Python heap peak of a few tensors, not the model (own tensors are written from maps)."""
    h, i, layers, experts, vocab = 256, 2048, 2, 8, 64
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((vocab, h), np.float32),
               "lm_head.weight": rng.standard_normal((vocab, h), np.float32),
               "model.norm.weight": np.ones(h, np.float32)}
    for n in range(layers):
        p = f"model.layers.{n}"
        tensors[f"{p}.input_layernorm.weight"] = np.ones(h, np.float32)
        tensors[f"{p}.post_attention_layernorm.weight"] = np.ones(h, np.float32)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{p}.self_attn.{proj}.weight"] = np.zeros((h, h), np.float32)
    for n in range(layers):
        tensors[router_name(n, "per_expert")] = rng.standard_normal((experts, h), np.float32)
        for e in range(experts):
            for proj, shape in (("w1", (i, h)), ("w3", (i, h)), ("w2", (h, i))):
                tensors[per_expert_name(n, e, proj)] = np.full(shape, n * 100 + e, np.float32)
    ckpt = tmp_path / "big"
    ckpt.mkdir()
    save_file(tensors, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps({
        "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": h,
        "intermediate_size": i, "num_hidden_layers": layers, "vocab_size": vocab,
        "num_local_experts": experts, "num_experts_per_tok": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "tie_word_embeddings": False}))
    one_tensor = h * i * 4
    del tensors
    tracemalloc.start()
    try:
        registry.register(ckpt, "big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * one_tensor, f"peak {peak / 2**20:.1f} MiB"
    assert verify(registry, "big").ok


def test_delete_during_a_registration_leaves_blobs_to_the_next_writer(registry, kit):
    """A registration in flight may be linking a blob the deleted version used: no sweep
    then (the staging lock says so); the next writer's open collects."""
    registry.register(kit.per_expert, "moe")
    with registry.artifacts.staging():  # as a registration in flight holds it
        registry.delete("moe@1")
        assert registry.freed == [] and len(list(registry.artifacts.blobs.keys())) == 24
    with Registry(registry.root) as writer:
        assert len([r for r in writer.recovered if r.startswith("blobs/")]) == 24
        assert list(writer.artifacts.blobs.keys()) == []
