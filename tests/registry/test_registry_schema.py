"""Schema versioning: fresh databases are current, v0 is migrated, unknown ones are refused
(on both back-ends; v0 existed only on SQLite)."""

from __future__ import annotations

import re
import sqlite3

import pytest

from model_registry.errors import SchemaError
from model_registry.registry import Registry
from model_registry.schema import SCHEMA_VERSION, ddl
from model_registry.verify import verify

V0_VERSION_COLUMNS = ("id, name, version, created_at, storage, artifact, source_path, kind, "
                      "layout, vllm_loadable, config_json, manifest_json, frozen_check, "
                      "frozen_details, total_bytes")


def _schema_version(root) -> str:
    with sqlite3.connect(root / "registry.db") as db:
        return db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]


def test_fresh_registry_has_current_schema(registry, backend):
    assert backend.execute("SELECT value FROM meta WHERE key = 'schema_version'") == \
        [(str(SCHEMA_VERSION),)]
    assert registry.meta.migrated_from == SCHEMA_VERSION
    reopened = Registry(backend.location)  # a second open finds it current: no migration
    assert reopened.meta.migrated_from == SCHEMA_VERSION
    reopened.close()


def test_v0_database_is_migrated_in_place(kit, tmp_path):
    # SQLite only: schema v0 predates the PostgreSQL store, which starts at v1.
    # A v0 registry (no evals table, no source_layout/converted columns) with one version,
    # its rows taken from a version registered by the current code.
    with Registry(tmp_path / "current") as current:
        current.register(kit.fused, "moe", aliases=["prod"], mode="link")
    old_root = tmp_path / "old"
    old_root.mkdir()
    with sqlite3.connect(old_root / "registry.db") as old:
        for stmt in ddl(0):
            old.execute(stmt)
        old.execute("INSERT INTO meta VALUES ('schema_version', '0')")
        old.execute("ATTACH DATABASE ? AS cur", (str(tmp_path / "current" / "registry.db"),))
        old.execute("INSERT INTO models SELECT * FROM cur.models")
        old.execute(f"INSERT INTO versions SELECT {V0_VERSION_COLUMNS} FROM cur.versions")
        for table in ("files", "expert_tensors", "aliases"):
            old.execute(f"INSERT INTO {table} SELECT * FROM cur.{table}")
    with Registry(old_root) as reg:
        assert reg.meta.migrated_from == 0
        info = reg.get("moe@prod")
        assert (info.version, info.layout, info.source_layout, info.converted) == \
            (1, "fused", "fused", False)
        reg.add_eval("moe@prod", "medmcqa", "acc", 0.5)  # the evals table exists now
        assert [e.value for e in reg.get("moe@1").evals] == [0.5]
        assert verify(reg, "moe@1").ok
        assert reg.register(kit.bare, "moe").version == 2
    assert _schema_version(old_root) == str(SCHEMA_VERSION)


def test_newer_schema_is_refused(registry, backend):
    backend.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION + 1),))
    for read_only in (False, True):
        with pytest.raises(SchemaError, match=f"schema_version {SCHEMA_VERSION + 1} is newer "
                                              f"than this mofe-serve understands"):
            Registry(backend.location, read_only=read_only)


@pytest.mark.parametrize("setup", [
    ["CREATE TABLE experiments (id INTEGER)"],
    ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
     "INSERT INTO meta VALUES ('schema_version', 'abc')"],
    ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)"],
])
def test_foreign_or_damaged_databases_are_refused(backend, setup):
    for stmt in setup:
        backend.execute(stmt)
    before = backend.tables()
    expected = rf"{re.escape(backend.database)}: (not a mofe registry|meta.schema_vers)"
    for read_only in (False, True):
        with pytest.raises(SchemaError, match=expected):
            Registry(backend.location, read_only=read_only)
    assert backend.tables() == before  # refused, not "repaired"


def test_older_schema_is_not_migrated_by_a_lookup(registry, backend):
    backend.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="schema is older than version 1; run a registry "
                                          "command that writes"):
        Registry(backend.location, read_only=True)
    assert backend.execute("SELECT value FROM meta WHERE key = 'schema_version'") == [("0",)]
