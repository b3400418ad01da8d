"""MetadataStore on PostgreSQL (psycopg 3): the metadata of a registry a team shares.

The tables are schema.py's (translated by its POSTGRESQL dialect) and the queries are
sqlite_store.SQLMetadataStore's, so both back-ends behave alike by construction; this module
adds only the connection, the write transaction and the read-only mode.

Writers are serialized: every write transaction first takes one transaction-scoped advisory
lock (pg_advisory_xact_lock), as SQLite's BEGIN IMMEDIATE does; readers never wait (MVCC).
Version allocation, the rows and the alias moves of a registration are one transaction
under that lock, so concurrent registrations from any number of processes or hosts get
distinct versions. Why not the alternatives:
  - SERIALIZABLE with retry: `publish` calls place_artifact (moves or uploads files) inside
    the transaction; retrying the transaction would replay that side effect.
  - a row lock per model (SELECT ... FOR UPDATE on `models`): a write also reads rows of
    other models (an alias's previous target, tensors shared across models that a delete
    may free), which a per-model lock would not protect.
The lock is held for the row writes and the artifact commit only: copying and hashing
happen before it. A killed client's transaction is rolled back by the server when its
connection drops, which also releases the lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from .config import describe_conninfo
from .errors import ConflictError, RegistryError
from .schema import POSTGRESQL
from .sqlite_store import BUSY_TIMEOUT_S, SQLMetadataStore

# Key of the registry's write lock (advisory locks are per database: one per registry).
WRITE_LOCK_KEY = int.from_bytes(b"mofe-reg", "big") & 0x7FFF_FFFF_FFFF_FFFF


class Row(tuple):
    """A result row by position and by column name, as sqlite3.Row is."""

    def __new__(cls, values: Sequence[Any], index: dict[str, int]):
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key):
        return super().__getitem__(self._index[key] if isinstance(key, str) else key)


def _row_factory(cursor: psycopg.Cursor) -> Callable[[Sequence[Any]], Row]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


class PgConnection:
    """A psycopg connection with sqlite3's call shape, so the shared queries run unchanged:
    execute/executemany with '?' placeholders (the shared SQL has no '?' or '%' otherwise)."""

    def __init__(self, raw: psycopg.Connection):
        self.raw = raw

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        return self.raw.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Any) -> psycopg.Cursor:
        cursor = self.raw.cursor()
        cursor.executemany(self._sql(sql), list(rows))
        return cursor

    def close(self) -> None:
        self.raw.close()


class PostgresMetadataStore(SQLMetadataStore):
    """conninfo: a libpq URL or key=value string (config.py strips the registry's own
    parameters); passwords and the rest come from it or from libpq's PG* environment
    variables (PGPASSWORD, PGSSLMODE, ...). `where` names the database in messages."""

    dialect = POSTGRESQL
    refused_write = (pg_errors.ReadOnlySqlTransaction,)

    def __init__(self, conninfo: str, read_only: bool = False, where: str | None = None):
        self.where = where or describe_conninfo(conninfo_to_dict(conninfo))
        self.read_only = read_only
        try:
            raw = psycopg.connect(conninfo, autocommit=True, row_factory=_row_factory)
        except psycopg.OperationalError as exc:
            raise RegistryError(f"cannot connect to the registry database {self.where}: "
                                f"{str(exc).strip()}") from None
        # autocommit: each read is its own statement, as with sqlite3's isolation_level=None;
        # writes open an explicit transaction in write().
        self.conn = PgConnection(raw)
        # A writer waits for the write lock as long as SQLite's busy_timeout, then gives up.
        raw.execute(f"SET lock_timeout = '{int(BUSY_TIMEOUT_S * 1000)}ms'")
        if read_only:  # a lookup: the server refuses any write on this session
            raw.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        self._open_schema()

    @contextmanager
    def write(self) -> Iterator[PgConnection]:
        if self.read_only:
            raise ConflictError(f"{self.where} was opened read-only (a lookup); "
                                "this operation writes")
        try:
            with self.conn.raw.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
                yield self.conn
        except pg_errors.LockNotAvailable:
            raise ConflictError(f"{self.where}: another writer held the registry's write lock "
                                f"for {BUSY_TIMEOUT_S:g} s; try again") from None

    @contextmanager
    def _read_transaction(self) -> Iterator[PgConnection]:
        with self.conn.raw.transaction(force_rollback=True):
            yield self.conn

