"""Register, resolve, alias, evals and delete through the Python API (real SQLite and
PostgreSQL, real files)."""

from __future__ import annotations

import pytest

from model_registry.checkpoint import detect_layout, expert_hashes, read_all_headers
from model_registry.errors import ConflictError, NotFoundError
from model_registry.registry import Registry


def test_copy_of_fused_checkpoint_is_stored_content_addressed(registry, kit):
    """A copy is a sharded per-expert checkpoint: own tensors in one file, each expert
    tensor a shard hard-linked to its blob (docs/registry.md); the same expert tensors."""
    info = registry.register(kit.fused, "moe")
    assert info.ref == "moe@1"
    assert (info.source_layout, info.layout, info.converted) == ("fused", "per_expert", True)
    assert info.vllm_loadable  # the per-expert layout: stock vLLM reads it too
    stored = registry.resolve("moe@1")
    assert stored.is_relative_to(registry.root)
    assert detect_layout(read_all_headers(stored)) == "per_expert"
    assert expert_hashes(stored) == expert_hashes(kit.fused)
    assert registry.meta.expert_hashes("moe", 1) == expert_hashes(kit.fused)
    shards = {f.path for f in info.files if f.path.startswith("model.layers.")}
    assert len(shards) == 4 * 2 * 3
    assert {f.path for f in info.files} - shards == {
        "config.json", "mofe.json", "tokenizer.json", "model-own.safetensors",
        "model.safetensors.index.json", "mofe-store.json"}


def test_link_records_directory_as_is(registry, kit):
    fused = registry.register(kit.fused, "moe", mode="link")
    assert (fused.storage, fused.layout, fused.converted) == ("link", "fused", False)
    assert fused.vllm_loadable is False
    assert registry.resolve(fused.ref) == kit.fused.resolve()
    per = registry.register(kit.per_expert, "moe", mode="link")
    assert per.vllm_loadable is True and per.version == 2
    assert not any(registry.artifacts.keys())  # nothing copied


def test_versions_aliases_and_refs(registry, kit):
    a = registry.register(kit.per_expert, "moe", aliases=["prod"])
    b = registry.register(kit.fused, "moe", aliases=["staging"])
    assert (a.version, b.version) == (1, 2)
    assert registry.resolve("moe") == registry.resolve("moe@2") == registry.resolve("moe@v2")
    assert registry.resolve("moe@latest") == registry.resolve("moe@staging")
    assert registry.resolve("moe@prod") == registry.resolve("moe@1") != registry.resolve("moe")
    assert registry.set_alias("moe", 2, "prod") == 1  # one alias -> one version: it moves
    assert registry.get("moe@prod").version == 2
    assert registry.get("moe@1").aliases == []
    assert registry.remove_alias("moe", "prod") == 2
    with pytest.raises(NotFoundError, match="no alias 'prod'"):
        registry.get("moe@prod")
    with pytest.raises(NotFoundError, match="no version 7"):
        registry.get("moe@7")
    with pytest.raises(NotFoundError, match="'nope' is not registered.*registered: moe"):
        registry.resolve("nope")
    [summary] = registry.list_models()
    assert (summary.name, summary.versions, summary.latest) == ("moe", 2, 2)
    assert summary.aliases == {"staging": 2}
    assert [v.version for v in registry.versions("moe")] == [1, 2]


def test_plain_path_refs(registry, kit, tmp_path, monkeypatch):
    assert registry.resolve(str(kit.bare)) == kit.bare.resolve()
    monkeypatch.chdir(kit.bare.parent)
    assert registry.resolve("moe-bare") == kit.bare.resolve()  # unregistered name, a dir here
    with pytest.raises(NotFoundError, match="no config.json"):
        registry.resolve(str(tmp_path))


def test_evals_are_kept_with_the_version(registry, kit):
    registry.register(kit.per_expert, "moe", aliases=["prod"])
    registry.add_eval("moe@prod", "medmcqa", "acc", 0.3125, split="validation", harness="lm-eval")
    registry.add_eval("moe@1", "mmlu", "acc", 0.25)
    evals = registry.get("moe@1").evals
    assert [(e.task, e.metric, e.value, e.split, e.harness) for e in evals] == [
        ("medmcqa", "acc", 0.3125, "validation", "lm-eval"), ("mmlu", "acc", 0.25, None, None)]


def test_delete_refuses_aliased_version_unless_forced(registry, kit):
    registry.register(kit.per_expert, "moe", aliases=["prod"])
    path = registry.resolve("moe@1")
    with pytest.raises(ConflictError, match="alias.*prod"):
        registry.delete("moe@1")
    assert path.is_dir()
    registry.delete("moe@prod", force=True)
    assert not path.exists()
    with pytest.raises(NotFoundError):
        registry.get("moe@1")
    # numbers are never reused: a later registration cannot be mistaken for the deleted one
    assert registry.register(kit.per_expert, "moe").version == 2


def test_delete_of_linked_version_leaves_the_directory(registry, kit):
    registry.register(kit.bare, "moe", mode="link")
    registry.delete("moe@1")
    assert (kit.bare / "model.safetensors").is_file()


def test_dense_llama_sources_can_be_registered(registry, kit):
    info = registry.register(kit.experts[0], "med-expert")
    assert (info.kind, info.layout, info.frozen_check) == ("llama", "dense", "unchecked")
    assert registry.meta.expert_hashes("med-expert", 1)[0] == expert_hashes(kit.experts[0])[0]


def test_registry_root_from_environment(kit, backend, monkeypatch):
    monkeypatch.setenv("MOFE_REGISTRY", backend.location)
    with Registry() as reg:
        assert reg.root == backend.root
        reg.register(kit.bare, "moe")
    assert backend.execute("SELECT name, version FROM versions") == [("moe", 1)]
    assert (backend.root / "artifacts" / "moe" / "v1" / "config.json").is_file()


def test_sharded_fused_checkpoint_with_subfolder(registry, kit, copy_of):
    import json

    from safetensors.numpy import load_file, save_file

    ckpt = copy_of(kit.fused, "sharded")
    tensors = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(ckpt / fname))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    (ckpt / "extra").mkdir()
    (ckpt / "extra" / "README.md").write_text("kept")
    info = registry.register(ckpt, "moe")
    stored = registry.resolve("moe")
    assert info.converted and expert_hashes(stored) == expert_hashes(kit.fused)
    index = json.loads((stored / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["model.layers.0.block_sparse_moe.experts.3.w2.weight"] == \
        "model.layers.0.block_sparse_moe.experts.3.w2.safetensors"
    assert index["model.embed_tokens.weight"] == "model-own.safetensors"
    assert (stored / "extra" / "README.md").read_text() == "kept"
    assert "extra/README.md" in {f.path for f in info.files}


def test_failed_row_write_removes_the_placed_artifact(registry, kit, monkeypatch):
    import sqlite3

    def broken_insert(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    original = registry.meta.publish

    def publish(new, aliases, place):
        def place_then_fail(version):
            place(version)
            broken_insert()
        return original(new, aliases, place_then_fail)

    monkeypatch.setattr(registry.meta, "publish", publish)
    with pytest.raises(sqlite3.OperationalError, match="simulated"):
        registry.register(kit.fused, "moe")
    assert list(registry.artifacts.keys()) == [] and registry.list_models() == []
    monkeypatch.undo()
    assert registry.register(kit.fused, "moe").version == 1


def test_delete_interrupted_after_commit_is_finished_on_next_open(registry, kit):
    registry.register(kit.per_expert, "moe")
    registry.meta.delete("moe", 1, force=False)  # rows gone, folder not yet removed
    assert (registry.root / "artifacts" / "moe" / "v1").is_dir()
    with Registry(registry.location) as reopened:
        assert reopened.recovered[0] == "artifacts/moe/v1"
        # and the blobs only it used: 24 expert tensors
        assert len(reopened.recovered) == 1 + 24 and list(reopened.artifacts.blobs.keys()) == []
    assert not (registry.root / "artifacts" / "moe" / "v1").exists()
