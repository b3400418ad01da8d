"""What must not differ between the metadata back-ends: value ranges, precision and order
(PostgreSQL's INTEGER is 32-bit, its REAL single precision, its text order the locale's,
unless schema.py's dialect translates them), and how a writer waits for another."""

from __future__ import annotations

import pytest

from model_registry.errors import ConflictError
from model_registry.stores import EvalEntry, FileEntry, NewVersion


def _new(name: str, size: int) -> NewVersion:
    return NewVersion(name=name, storage="link", source_path=f"/data/{name}", kind="llama",
                      layout="dense", source_layout="dense", vllm_loadable=True,
                      config={"model_type": "llama"},
                      files=[FileEntry(path="model.safetensors", size=size, sha256="ab" * 32)],
                      expert_hashes={0: {"mlp.down_proj": "cd" * 32}})


def test_sizes_beyond_32_bits_and_exact_floats_round_trip(registry):
    size = 6_442_450_944  # 6 GiB: one TinyLlama-scale expert file
    info = registry.meta.publish(_new("big", size), ["prod"], lambda version: "/data/big")
    assert info.total_bytes == size and info.files[0].size == size
    registry.meta.add_eval("big", 1, EvalEntry(task="medmcqa", metric="acc", value=0.1 + 0.2,
                                               created_at="2026-01-01T00:00:00+00:00"))
    assert registry.get("big@prod").evals[0].value == 0.1 + 0.2  # double, not float4


def test_names_sort_bytewise_on_every_back_end(registry):
    names = ["moe0", "moe_c", "moe.b", "moe-a", "m", "moe-a-2"]
    for name in names:
        registry.meta.publish(_new(name, 1), [], lambda version, n=name: f"/data/{n}")
    expected = sorted(names, key=str.encode)
    assert [m.name for m in registry.list_models()] == expected
    assert [r[0] for r in registry.meta.find_by_tensor_hash("cd" * 32)] == expected


# PostgreSQL only: SQLite's busy timeout is sqlite3's own (60 s, "database is locked").
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_writer_gives_up_after_the_busy_timeout(registry, backend, monkeypatch):
    """Another writer holds the write lock: a write waits, then fails with a clear error."""
    registry.meta.publish(_new("moe", 1), [], lambda version: "/data/moe")
    import psycopg

    from model_registry import pg_store
    from model_registry.registry import Registry

    monkeypatch.setattr(pg_store, "BUSY_TIMEOUT_S", 0.2)
    other = Registry(backend.location)
    with psycopg.connect(backend.conninfo, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (pg_store.WRITE_LOCK_KEY,))
        with pytest.raises(ConflictError, match="another writer held the registry's write "
                                                "lock for 0.2 s"):
            other.set_alias("moe", 1, "prod")
    assert other.set_alias("moe", 1, "prod") is None  # released: the write goes through
    other.close()
