"""Helpers for registry tests; their checkpoints come from training/test_models.py."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from model_registry.config import DB_FILE, parse_location


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)


@dataclass(frozen=True)
class Backend:
    """A fresh registry location on one metadata back-end, plus direct SQL on its database
    (how a test tampers with rows or checks them behind the registry's back)."""

    name: str  # "sqlite" | "postgresql"
    location: str  # what MOFE_REGISTRY, --registry and Registry() take
    root: Path  # the registry folder (SQLite) or the artifact folder (PostgreSQL)
    conninfo: str | None = None  # PostgreSQL: the test database

    @property
    def database(self) -> str:
        """The metadata database as the registry's messages name it."""
        return parse_location(self.location).database

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement ('?' placeholders) in its own committed transaction."""
        if self.conninfo is None:
            self.root.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.root / DB_FILE)) as db, db:
                return [tuple(r) for r in db.execute(sql, params).fetchall()]
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params or None)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def tables(self) -> set[str]:
        if self.conninfo is None:
            if not (self.root / DB_FILE).is_file():
                return set()
            return {r[0] for r in self.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {r[0] for r in self.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}

    def check_consistent(self) -> None:
        """The database is intact and holds no half-written version."""
        if self.conninfo is None:
            assert self.execute("PRAGMA integrity_check") == [("ok",)]
            assert self.execute("PRAGMA foreign_key_check") == []
        # every version has its files; every alias points at a version of its own model;
        # no allocated-but-unrecorded version number is below a recorded one
        assert self.execute("SELECT v.name, v.version FROM versions v WHERE NOT EXISTS "
                            "(SELECT 1 FROM files f WHERE f.version_id = v.id)") == []
        assert self.execute("SELECT a.name, a.alias FROM aliases a JOIN versions v "
                            "ON v.id = a.version_id WHERE v.name <> a.name") == []
        assert self.execute("SELECT m.name FROM models m JOIN versions v ON v.name = m.name "
                            "GROUP BY m.name, m.next_version "
                            "HAVING m.next_version <= max(v.version)") == []
