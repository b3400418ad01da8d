"""Fixtures for registry tests: one tiny checkpoint kit per session, and a fresh registry per
test on each metadata back-end: embedded SQLite, and PostgreSQL (a real server: a throw-away
cluster started once per session, a fresh database per test)."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from registry_support import Backend

from benchmarks.pg_cluster import PostgresCluster, find_bindir
from model_registry.registry import Registry
from training.test_models import FormatKit, build_format_kit

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> FormatKit:
    """Read-only: tests that modify a checkpoint copy it first (see `copy_of`)."""
    return build_format_kit(tmp_path_factory.mktemp("registry-kit"))


@pytest.fixture(scope="session")
def postgres_cluster():
    bindir = find_bindir()
    if bindir is None:  # .ci/run installs Debian's postgresql package, so CI never gets here
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in "
                    "/usr/lib/postgresql/*/bin or on PATH; install Debian's `postgresql`")
    cluster = PostgresCluster(bindir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    """Where a fresh, empty registry lives: a folder (SQLite), or a new database of the
    session's PostgreSQL cluster with artifacts in a folder."""
    root = tmp_path / "registry"
    if request.param == "sqlite":
        return Backend("sqlite", str(root), root)
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    dbname = cluster.create_database()
    request.addfinalizer(lambda: cluster.drop_database(dbname))
    conninfo = cluster.conninfo(dbname)
    return Backend("postgresql", f"{conninfo}&artifacts={quote(str(root))}", root, conninfo)


@pytest.fixture
def registry(backend, monkeypatch) -> Registry:
    monkeypatch.setenv("MOFE_REGISTRY", backend.location)
    reg = Registry(backend.location)
    yield reg
    reg.close()


@pytest.fixture
def copy_of(tmp_path):
    def _copy(src: Path, name: str | None = None) -> Path:
        return Path(shutil.copytree(src, tmp_path / "copies" / (name or src.name)))
    return _copy
