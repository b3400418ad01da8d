"""MetadataStore on SQLite (WAL, busy_timeout, BEGIN IMMEDIATE for every write), and the SQL
it shares with the PostgreSQL store (pg_store.py).

`SQLMetadataStore` holds every query, written once in SQL both back-ends run (upserts with
ON CONFLICT, ids from RETURNING, '?' placeholders: pg_store's connection maps them). A
back-end adds only its connection, its write transaction and its schema dialect.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._hooks import pause_point
from .errors import ConflictError, NotFoundError, SchemaError
from .schema import SCHEMA_VERSION, SQLITE, Dialect, ensure_schema, tables
from .stores import EvalEntry, FileEntry, ModelSummary, NewVersion, VersionInfo

BUSY_TIMEOUT_S = 60.0
UPSERT_ALIAS = ("INSERT INTO aliases (name, alias, version_id) VALUES (?, ?, ?) "
                "ON CONFLICT (name, alias) DO UPDATE SET version_id = excluded.version_id")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SQLMetadataStore:
    """The MetadataStore queries, over a connection with sqlite3's call shape.

    Subclasses set `conn`, `where` (the database, for messages: never a password),
    `dialect`, `read_only`, and implement `write()` (one transaction that excludes every
    other writer) and `_read_transaction()` (one that always rolls back)."""

    conn: Any
    where: str
    dialect: Dialect
    read_only: bool
    # what the back-end raises when a read-only transaction tries to write
    refused_write: tuple[type[BaseException], ...] = ()

    def write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read_transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.conn.close()

    def _open_schema(self) -> None:
        """Writers create or migrate the schema; lookups only check it (a registry with no
        tables at all is not there yet: NotFoundError)."""
        self.migrated_from = SCHEMA_VERSION
        if self._schema_is_current():  # read first: opening must not wait on a writer
            return
        if not self.read_only:
            with self.write():  # re-checked under the write lock: another writer may have won
                self.migrated_from = ensure_schema(self.conn, self.where, self.dialect)
            return
        if not tables(self.conn, self.dialect):
            self.close()
            raise NotFoundError(f"no model registry at {self.where} (no tables yet; register "
                                "a model first)")
        self._refuse_stale_schema()

    def _refuse_stale_schema(self) -> None:
        """Read-only: name a newer or broken schema as a writer would; an older one needs a
        writer to migrate it."""
        try:
            with self._read_transaction():
                ensure_schema(self.conn, self.where, self.dialect)  # raises before writing,
        except self.refused_write:  # ...or tries to migrate, which a read-only one refuses
            raise SchemaError(f"{self.where}: schema is older than version {SCHEMA_VERSION}; "
                              "run a registry command that writes (e.g. register) to migrate "
                              "it") from None
        finally:
            self.close()

    def _schema_is_current(self) -> bool:
        if "meta" not in tables(self.conn, self.dialect):  # a new database (or not ours)
            return False
        row = self.conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return row is not None and row[0] == str(SCHEMA_VERSION)

    # ---- writes -------------------------------------------------------------------------
    def publish(self, new: NewVersion, aliases: list[str],
                place_artifact: Callable[[int], str]) -> VersionInfo:
        with self.write() as c:
            c.execute("INSERT INTO models (name, created_at) VALUES (?, ?) "
                      "ON CONFLICT (name) DO NOTHING", (new.name, now()))
            version = c.execute("UPDATE models SET next_version = next_version + 1 "
                                "WHERE name = ? RETURNING next_version - 1",
                                (new.name,)).fetchone()[0]
            pause_point("locked")
            artifact = place_artifact(version)
            pause_point("placed")
            vid = c.execute(
                "INSERT INTO versions (name, version, created_at, storage, artifact, "
                "source_path, kind, layout, source_layout, converted, vllm_loadable, "
                "config_json, manifest_json, frozen_check, frozen_details, total_bytes) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (new.name, version, now(), new.storage, artifact, new.source_path, new.kind,
                 new.layout, new.source_layout, int(new.converted), int(new.vllm_loadable),
                 json.dumps(new.config), json.dumps(new.manifest) if new.manifest else None,
                 new.frozen_check, json.dumps(new.frozen_details), new.total_bytes)).fetchone()[0]
            c.executemany("INSERT INTO files (version_id, path, size, sha256) VALUES (?,?,?,?)",
                          [(vid, f.path, f.size, f.sha256) for f in new.files])
            c.executemany(
                "INSERT INTO expert_tensors (version_id, expert, key, sha256) VALUES (?,?,?,?)",
                [(vid, e, k, h) for e, hs in new.expert_hashes.items() for k, h in hs.items()])
            c.executemany(UPSERT_ALIAS, [(new.name, a, vid) for a in aliases])
            pause_point("inserted")
        return self.get(new.name, version)

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point alias at version; return the version it pointed at before (or None)."""
        with self.write() as c:
            vid = self._vid(name, version)
            before = self.alias_target(name, alias)
            c.execute(UPSERT_ALIAS, (name, alias, vid))
        return before

    def remove_alias(self, name: str, alias: str) -> int | None:
        with self.write() as c:
            before = self.alias_target(name, alias)
            c.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
        return before

    def delete(self, name: str, version: int, force: bool) -> VersionInfo:
        with self.write() as c:
            info = self.get(name, version)
            if info is None:
                raise NotFoundError(f"{name}@{version} is not registered")
            if info.aliases and not force:
                raise ConflictError(
                    f"{info.ref} is the target of alias(es) {', '.join(info.aliases)}; move or "
                    "remove them first (mofe registry unalias) or pass --force")
            vid = self._vid(name, version)
            c.execute("DELETE FROM aliases WHERE version_id = ?", (vid,))
            c.execute("DELETE FROM versions WHERE id = ?", (vid,))
        return info

    def add_eval(self, name: str, version: int, entry: EvalEntry) -> None:
        with self.write() as c:
            c.execute("INSERT INTO evals (version_id, task, metric, value, split, harness, "
                      "created_at) VALUES (?,?,?,?,?,?,?)",
                      (self._vid(name, version), entry.task, entry.metric, entry.value,
                       entry.split, entry.harness, entry.created_at or now()))

    # ---- reads --------------------------------------------------------------------------
    def _vid(self, name: str, version: int) -> int:
        row = self.conn.execute("SELECT id FROM versions WHERE name = ? AND version = ?",
                                (name, version)).fetchone()
        if row is None:
            raise NotFoundError(f"{name}@{version} is not registered")
        return row[0]

    def get(self, name: str, version: int) -> VersionInfo | None:
        row = self.conn.execute("SELECT * FROM versions WHERE name = ? AND version = ?",
                                (name, version)).fetchone()
        return self._info(row) if row else None

    def _info(self, row: Any) -> VersionInfo:
        vid = row["id"]
        q = self.conn.execute
        aliases = [r[0] for r in q("SELECT alias FROM aliases WHERE version_id = ? "
                                   "ORDER BY alias", (vid,))]
        files = [FileEntry(path=r[0], size=r[1], sha256=r[2]) for r in
                 q("SELECT path, size, sha256 FROM files WHERE version_id = ? ORDER BY path",
                   (vid,))]
        evals = [EvalEntry(task=r[0], metric=r[1], value=r[2], split=r[3], harness=r[4],
                           created_at=r[5]) for r in
                 q("SELECT task, metric, value, split, harness, created_at FROM evals "
                   "WHERE version_id = ? ORDER BY id", (vid,))]
        return VersionInfo(
            name=row["name"], version=row["version"], created_at=row["created_at"],
            storage=row["storage"], artifact=row["artifact"], source_path=row["source_path"],
            kind=row["kind"], layout=row["layout"], source_layout=row["source_layout"],
            converted=bool(row["converted"]), vllm_loadable=bool(row["vllm_loadable"]),
            config=json.loads(row["config_json"]),
            manifest=json.loads(row["manifest_json"]) if row["manifest_json"] else None,
            frozen_check=row["frozen_check"], frozen_details=json.loads(row["frozen_details"]),
            total_bytes=row["total_bytes"], aliases=aliases, files=files, evals=evals)

    def latest_version(self, name: str) -> int | None:
        return self.conn.execute("SELECT max(version) FROM versions WHERE name = ?",
                                 (name,)).fetchone()[0]

    def alias_target(self, name: str, alias: str) -> int | None:
        row = self.conn.execute("SELECT v.version FROM aliases a JOIN versions v "
                                "ON v.id = a.version_id WHERE a.name = ? AND a.alias = ?",
                                (name, alias)).fetchone()
        return row[0] if row else None

    def models(self) -> list[ModelSummary]:
        out = []
        for r in self.conn.execute("SELECT name, count(*), max(version), max(created_at) "
                                   "FROM versions GROUP BY name ORDER BY name"):
            aliases = {a: v for a, v in self.conn.execute(
                "SELECT a.alias, v.version FROM aliases a JOIN versions v ON v.id = a.version_id"
                " WHERE a.name = ? ORDER BY a.alias", (r[0],))}
            out.append(ModelSummary(name=r[0], versions=r[1], latest=r[2], aliases=aliases,
                                    updated_at=r[3]))
        return out

    def versions(self, name: str) -> list[VersionInfo]:
        rows = self.conn.execute("SELECT * FROM versions WHERE name = ? ORDER BY version",
                                 (name,)).fetchall()
        return [self._info(r) for r in rows]

    def expert_hashes(self, name: str, version: int) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {}
        for e, k, h in self.conn.execute("SELECT expert, key, sha256 FROM expert_tensors "
                                         "WHERE version_id = ?", (self._vid(name, version),)):
            out.setdefault(e, {})[k] = h
        return out

    def find_by_source(self, source_path: str) -> list[VersionInfo]:
        rows = self.conn.execute("SELECT * FROM versions WHERE source_path = ? OR "
                                 "(storage = 'link' AND artifact = ?) ORDER BY name, version",
                                 (source_path, source_path)).fetchall()
        return [self._info(r) for r in rows]

    def find_by_tensor_hash(self, sha256: str) -> list[tuple[str, int, int, str]]:
        return [tuple(r) for r in self.conn.execute(
            "SELECT v.name, v.version, t.expert, t.key FROM expert_tensors t JOIN versions v "
            "ON v.id = t.version_id WHERE t.sha256 = ? ORDER BY v.name, v.version", (sha256,))]

    def artifact_keys(self) -> set[str]:
        return {r[0] for r in self.conn.execute(
            "SELECT artifact FROM versions WHERE storage = 'copy'")}


class SQLiteMetadataStore(SQLMetadataStore):
    dialect = SQLITE
    refused_write = (sqlite3.OperationalError,)

    def __init__(self, db_path: Path, read_only: bool = False):
        self.db_path = Path(db_path)
        self.where = str(self.db_path)
        self.read_only = read_only
        if read_only:  # a lookup: no journal-mode change, no schema migration, no writes
            if not self.db_path.is_file():
                raise NotFoundError(f"no registry database at {self.db_path}")
            self.conn = sqlite3.connect(f"{self.db_path.absolute().as_uri()}?mode=ro", uri=True,
                                        timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                        check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self._open_schema()
            return
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so version allocation and
        # every row of a registration share one explicit write transaction.
        self.conn = sqlite3.connect(str(self.db_path), timeout=BUSY_TIMEOUT_S,
                                    isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self._open_schema()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise ConflictError(f"{self.db_path} was opened read-only (a lookup); "
                                "this operation writes")
        self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("ROLLBACK")
