"""MOFE_REGISTRY / --registry: a folder (embedded SQLite, the default) or a postgresql://
URL; bad locations are refused with the bad part named, and no message shows a password."""

from __future__ import annotations

import platformdirs
import pytest
from click.testing import CliRunner

from benchmarks.pg_cluster import PostgresCluster
from model_registry.cli import registry_cli
from model_registry.config import open_registry, parse_location
from model_registry.errors import LocationError, RegistryError
from model_registry.pg_store import PostgresMetadataStore
from model_registry.registry import Registry
from model_registry.sqlite_store import SQLiteMetadataStore


def test_default_is_the_embedded_sqlite_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MOFE_REGISTRY", raising=False)
    loc = parse_location(None)
    assert loc.root == platformdirs.user_data_path("mofe-registry") and not loc.is_postgres
    monkeypatch.setenv("MOFE_REGISTRY", str(tmp_path / "reg"))
    with Registry() as reg:
        assert isinstance(reg.meta, SQLiteMetadataStore) and reg.root == tmp_path / "reg"
    assert (tmp_path / "reg" / "registry.db").is_file()


def test_postgres_url_forms(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    loc = parse_location("postgresql://ml@db.internal:6432/models?sslmode=require"
                         "&artifacts=/mnt/models")
    assert loc.is_postgres and loc.conninfo == \
        "postgresql://ml@db.internal:6432/models?sslmode=require"  # ours stripped, libpq's kept
    assert str(loc.root) == "/mnt/models" and loc.artifacts == "/mnt/models"
    assert loc.database == "postgresql://ml@db.internal:6432/models"
    assert parse_location("postgres://h/db?artifacts=file:///srv/a").root.as_posix() == "/srv/a"
    # no artifacts: a local folder of its own per database, never the SQLite default folder
    default = parse_location("postgresql://h/models")
    assert default.root == tmp_path / "data" / "mofe-team-registry" / "h-5432-models"
    assert parse_location("postgresql:///models?host=/run/pg").conninfo == \
        "postgresql:///models?host=%2Frun%2Fpg"
    # artifacts in a bucket: the local folder is the node's cache (an emptyDir in deploy/)
    monkeypatch.setenv("MOFE_REGISTRY_CACHE", "/var/cache/mofe-registry")
    bucket = parse_location("postgresql://h/models?artifacts=s3://mofe-models/registry")
    assert bucket.artifacts == "s3://mofe-models/registry"
    assert str(bucket.root) == "/var/cache/mofe-registry"


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://h/db", "unsupported scheme 'mysql'"),
    ("postgresql://h/db?artifacts=/a&artifacts=/b", "'artifacts' is given 2 times"),
    ("postgresql://h/db?artifacts=rel/dir", "artifacts='rel/dir' is a relative path"),
    ("postgresql://h/db?artifacts=", "artifacts='' is empty"),
    ("postgresql://h/db?artifacts=file://host/x", "file:// URL must be file:///ABSOLUTE"),
    ("postgresql://h/db?colour=blue", 'invalid URI query parameter: "colour"'),
    ("postgresql://h", "no database name"),
])
def test_bad_locations_name_the_bad_part(url, message, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with pytest.raises(LocationError, match=message):
        Registry(url)
    res = CliRunner().invoke(registry_cli, ["--registry", url, "list"])
    assert res.exit_code == 1 and res.stderr.startswith("error: ") and message in res.stderr
    assert list(tmp_path.iterdir()) == []  # refused before creating anything


def test_password_is_never_shown(tmp_path):
    url = "postgresql://ml:hunter2@127.0.0.1:1/models"  # nothing listens on port 1
    with pytest.raises(RegistryError) as refused:
        Registry(f"{url}?artifacts={tmp_path}")
    assert "postgresql://ml@127.0.0.1:1/models" in str(refused.value)
    with pytest.raises(LocationError) as bad:
        parse_location(f"{url}?colour=blue")
    for exc in (refused.value, bad.value):
        assert "hunter2" not in str(exc) and "ml:***@127.0.0.1" in str(bad.value)


def test_password_comes_from_the_libpq_environment(postgres_cluster: PostgresCluster, kit,
                                                   tmp_path, monkeypatch):
    dbname = postgres_cluster.create_database()
    try:
        with postgres_cluster.admin() as admin:
            admin.execute("CREATE ROLE team LOGIN PASSWORD 'team-secret'")
            admin.execute(f'ALTER DATABASE "{dbname}" OWNER TO team')
        url = f"{postgres_cluster.conninfo(dbname, user='team')}&artifacts={tmp_path / 'a'}"
        monkeypatch.delenv("PGPASSWORD", raising=False)
        with pytest.raises(RegistryError, match=f"cannot connect to the registry database "
                                                f"postgresql://team@.*/{dbname}"):
            Registry(url)
        monkeypatch.setenv("PGPASSWORD", "team-secret")
        with open_registry(url) as reg:
            assert isinstance(reg.meta, PostgresMetadataStore)
            assert reg.register(kit.bare, "moe").ref == "moe@1"
        monkeypatch.setenv("MOFE_REGISTRY", url)
        res = CliRunner().invoke(registry_cli, ["show", "moe@1", "--json"])
        assert res.exit_code == 0 and '"ref": "moe@1"' in res.stdout
    finally:
        postgres_cluster.drop_database(dbname)
        with postgres_cluster.admin() as admin:
            admin.execute("DROP ROLE team")
