"""Reading a REF writes nothing: no directory creation, no recovery sweep, no migration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from model_registry.cli import registry_cli
from model_registry.errors import ConflictError, NotFoundError
from model_registry.registry import Registry, resolve_ref

SQLITE_OWN = ("registry.db-wal", "registry.db-shm")  # SQLite's read index, not our writes


def _tree(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in root.rglob("*") if p.name not in SQLITE_OWN}


def test_lookup_in_a_missing_registry_is_a_clear_error_and_creates_nothing(tmp_path,
                                                                          monkeypatch):
    missing = tmp_path / "no-registry"
    monkeypatch.setenv("MOFE_REGISTRY", str(missing))
    with pytest.raises(NotFoundError, match=f"no model registry at {missing}"):
        resolve_ref("moe@1")
    from mofe_serve.resolve import resolve_served_model

    with pytest.raises(NotFoundError, match="no model registry"):
        resolve_served_model("moe@prod")
    res = CliRunner().invoke(registry_cli, ["--registry", str(missing), "resolve", "moe"])
    assert res.exit_code == 1 and "no model registry at" in res.stderr
    assert not missing.exists()
    assert os.listdir(tmp_path) == []


def test_lookup_leaves_a_registry_untouched(kit, tmp_path):
    root = tmp_path / "reg"
    with Registry(root) as reg:
        reg.register(kit.per_expert, "moe", aliases=["prod"])
    leftover = root / "tmp" / "stage-killed"  # as a killed registration leaves it
    leftover.mkdir()
    (leftover / "half.safetensors").write_bytes(b"x")
    before = _tree(root)
    path = resolve_ref("moe@prod", root)
    assert path == root / "artifacts" / "moe" / "v1"
    for args in (["resolve", "moe"], ["show", "moe@1", "--json"], ["list", "--json"],
                 ["verify", "moe@prod"], ["lineage", "moe"]):
        res = CliRunner().invoke(registry_cli, ["--registry", str(root), *args])
        assert res.exit_code == 0, (args, res.output)
    assert _tree(root) == before  # the leftover is still there: no recovery sweep on a read
    with Registry(root, read_only=True) as reg, pytest.raises(ConflictError, match="read-only"):
        reg.set_alias("moe", 1, "staging")
    with Registry(root) as reg:  # a writer's open sweeps it
        assert reg.recovered == ["tmp/stage-killed"]
