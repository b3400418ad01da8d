"""SQLite schema of the registry, its version number, and migrations from older layouts.

The `meta` table holds `schema_version`. v0 (the first layout) had no `evals` table and
stored checkpoints only as they came (no `source_layout` / `converted` columns); v1 adds both.
A database newer than this code, or one with tables but no `meta`, is refused, never guessed.
"""

from __future__ import annotations

import sqlite3

from .errors import SchemaError

SCHEMA_VERSION = 1

_META = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_MODELS = """CREATE TABLE models (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 1  -- versions are never reused, even after delete
)"""
_VERSIONS_V0_COLUMNS = """
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL REFERENCES models(name),
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    storage TEXT NOT NULL CHECK (storage IN ('copy', 'link')),
    artifact TEXT NOT NULL,      -- copy: key inside the artifact store; link: absolute path
    source_path TEXT NOT NULL,   -- the directory given to `register`
    kind TEXT NOT NULL,          -- mixtral | llama
    layout TEXT NOT NULL,        -- fused | per_expert | dense (as stored)
    vllm_loadable INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    manifest_json TEXT,
    frozen_check TEXT NOT NULL CHECK (frozen_check IN ('passed', 'failed', 'unchecked')),
    frozen_details TEXT NOT NULL,
    total_bytes INTEGER NOT NULL"""
_VERSIONS_V1_EXTRA = """,
    source_layout TEXT NOT NULL,  -- layout of the directory given to `register`
    converted INTEGER NOT NULL DEFAULT 0"""
_FILES = """CREATE TABLE files (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    path TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (version_id, path))"""
_TENSORS = """CREATE TABLE expert_tensors (
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    expert INTEGER NOT NULL, key TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (version_id, expert, key))"""
_TENSOR_INDEX = "CREATE INDEX expert_tensors_sha ON expert_tensors (sha256)"
_ALIASES = """CREATE TABLE aliases (
    name TEXT NOT NULL REFERENCES models(name),
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    PRIMARY KEY (name, alias))"""
_EVALS = """CREATE TABLE evals (
    id INTEGER PRIMARY KEY,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    task TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
    split TEXT, harness TEXT, created_at TEXT NOT NULL)"""


def ddl(version: int) -> list[str]:
    """Statements that create an empty database of schema `version` (0 kept for tests)."""
    unique = ",\n    UNIQUE (name, version))"
    versions = f"CREATE TABLE versions ({_VERSIONS_V0_COLUMNS}"
    if version == 0:
        return [_META, _MODELS, versions + unique, _FILES, _TENSORS, _TENSOR_INDEX, _ALIASES]
    if version == 1:
        return [_META, _MODELS, versions + _VERSIONS_V1_EXTRA + unique, _FILES, _TENSORS,
                _TENSOR_INDEX, _ALIASES, _EVALS]
    raise ValueError(f"no DDL for schema version {version}")


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE versions ADD COLUMN source_layout TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE versions SET source_layout = layout")
    conn.execute("ALTER TABLE versions ADD COLUMN converted INTEGER NOT NULL DEFAULT 0")
    conn.execute(_EVALS)


MIGRATIONS = {0: _migrate_0_to_1}


def ensure_schema(conn: sqlite3.Connection, db_path: str) -> int:
    """Create, migrate or refuse; the caller holds a write transaction. Returns the old version."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        for stmt in ddl(SCHEMA_VERSION):
            conn.execute(stmt)
        _set_version(conn, SCHEMA_VERSION)
        return SCHEMA_VERSION
    if "meta" not in tables:
        raise SchemaError(f"{db_path}: not a mofe registry database (no 'meta' table; "
                          f"found tables {sorted(tables)})")
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    try:
        found = int(row[0]) if row else None
    except ValueError:
        found = None
    if found is None or found < 0:
        raise SchemaError(f"{db_path}: meta.schema_version is missing or not a number ({row})")
    if found > SCHEMA_VERSION:
        raise SchemaError(f"{db_path}: registry schema_version {found} is newer than this "
                          f"mofe-serve understands ({SCHEMA_VERSION}); upgrade mofe-serve")
    for v in range(found, SCHEMA_VERSION):
        MIGRATIONS[v](conn)
        _set_version(conn, v + 1)
    return found


def _set_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                 (str(version),))
