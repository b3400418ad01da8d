"""Reading a REF writes nothing: no directory creation, no recovery sweep, no migration."""

from __future__ import annotations

import os
import re
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


def test_lookup_in_a_missing_registry_is_a_clear_error_and_creates_nothing(backend, tmp_path,
                                                                          monkeypatch):
    # SQLite: no registry folder. PostgreSQL: an empty database (and no artifact folder).
    missing = backend.root if backend.name == "sqlite" else backend.database
    monkeypatch.setenv("MOFE_REGISTRY", backend.location)
    with pytest.raises(NotFoundError, match=f"no model registry at {re.escape(str(missing))}"):
        resolve_ref("moe@1")
    from mofe_serve.resolve import resolve_served_model

    with pytest.raises(NotFoundError, match="no model registry"):
        resolve_served_model("moe@prod")
    res = CliRunner().invoke(registry_cli, ["--registry", backend.location, "resolve", "moe"])
    assert res.exit_code == 1 and "no model registry at" in res.stderr
    assert not backend.root.exists()
    assert os.listdir(tmp_path) == []
    assert backend.tables() == set()  # no schema created by a lookup either


def test_lookup_leaves_a_registry_untouched(kit, backend):
    root, location = backend.root, backend.location
    with Registry(location) as reg:
        reg.register(kit.per_expert, "moe", aliases=["prod"])
    leftover = root / "tmp" / "stage-killed"  # as a killed registration leaves it
    leftover.mkdir()
    (leftover / "half.safetensors").write_bytes(b"x")
    before = _tree(root)
    path = resolve_ref("moe@prod", location)
    assert path == root / "artifacts" / "moe" / "v1"
    for args in (["resolve", "moe"], ["show", "moe@1", "--json"], ["list", "--json"],
                 ["verify", "moe@prod"], ["lineage", "moe"]):
        res = CliRunner().invoke(registry_cli, ["--registry", location, *args])
        assert res.exit_code == 0, (args, res.output)
    assert _tree(root) == before  # the leftover is still there: no recovery sweep on a read
    with Registry(location, read_only=True) as reg, pytest.raises(ConflictError,
                                                                  match="read-only"):
        reg.set_alias("moe", 1, "staging")
    with Registry(location, read_only=True) as reg, pytest.raises(reg.meta.refused_write):
        reg.meta.conn.execute("DELETE FROM aliases")  # the database itself refuses writes
    with Registry(location, read_only=True) as reg:
        assert reg.get("moe@prod").version == 1
    assert _tree(root) == before
    with Registry(location) as reg:  # a writer's open sweeps it
        assert reg.recovered == ["tmp/stage-killed"]
