"""The fsspec artifact store: S3 through s3fs, and a shared folder.

No real S3 is reachable here: moto's S3-compatible server, started on a loopback port
(ThreadedMotoServer), stands in for a real bucket. Everything else is real: s3fs, SQLite,
the files, transformers loading the resolved directory. The two "nodes" are two cache
folders in one test process, as two machines would each have their own.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from model_registry.registry import Registry
from model_registry.verify import verify
from training.test_models import write_mixtral

EXPERT_TENSORS = 24  # 4 experts x 2 layers x (w1, w2, w3) in the format kit
BUCKET = "mofe-team"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing",
               "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1"
                 ).create_bucket(Bucket=BUCKET)
    yield options
    server.stop()


def _node(root, url, cache, options, read_only=False) -> Registry:
    """SQLite on `root` stands in for the shared metadata store (PostgreSQL in a team)."""
    return Registry(root, artifacts=url, cache_dir=cache, storage_options=options,
                    read_only=read_only)


def _server_gets(caplog, prefix: str) -> list[str]:
    """Object GETs the S3 server answered (its werkzeug request log), under `prefix`."""
    return [m for r in caplog.records if r.name == "werkzeug"
            for m in [r.getMessage()] if f'"GET /{prefix}/' in m]


def test_second_node_downloads_each_shared_blob_once_and_loads(s3, kit, tmp_path, caplog):
    import torch
    from transformers import AutoModelForCausalLM

    url, meta = f"s3://{BUCKET}/{tmp_path.name}", tmp_path / "meta"
    variant = write_mixtral(tmp_path / "variant", kit.experts, "fused", seed=7)
    with _node(meta, url, tmp_path / "node1", s3) as writer:
        a = writer.register(kit.fused, "moe", aliases=["prod"])
        b = writer.register(variant, "moe-med")
        fs = writer.artifacts.fs
        assert len(fs.find(f"{BUCKET}/{tmp_path.name}/blobs")) == EXPERT_TENSORS
        assert fs.find(f"{BUCKET}/{tmp_path.name}/staging") == []  # nothing half-published
        assert writer.artifacts.downloads == []  # the registering node has it all cached

    with _node(meta, url, tmp_path / "node2", s3, read_only=True) as reader, \
            caplog.at_level(logging.INFO, logger="werkzeug"):
        caplog.clear()
        paths = [reader.resolve("moe@prod"), reader.resolve("moe-med")]
        served = _server_gets(caplog, f"{BUCKET}/{tmp_path.name}/blobs")
        assert len(served) == EXPERT_TENSORS  # the server saw each blob fetched once
        fetched = reader.artifacts.downloads
        blobs = [p for p in fetched if "/blobs/" in p]
        assert len(blobs) == len(set(blobs)) == EXPERT_TENSORS  # each once, for both versions
        own = [p for p in fetched if "/blobs/" not in p]
        # own files are cached by content too: a tokenizer both versions have comes once
        n_own = len({f.sha256 for i in (a, b) for f in i.files
                     if not f.path.startswith("model.layers.")})
        assert len(own) == n_own
        assert reader.resolve("moe-med") == paths[1] and len(fetched) == len(blobs) + n_own
        for shard in (p for p in paths[0].iterdir() if p.name.startswith("model.layers.")):
            assert os.path.samefile(shard, paths[1] / shard.name)  # one cached inode
            assert stat.S_IMODE(shard.stat().st_mode) == 0o444
        assert all(verify(reader, ref).ok for ref in ("moe@1", "moe-med@1"))
        ids = torch.tensor([[3, 1, 4, 1, 5]])
        with torch.no_grad():
            got = AutoModelForCausalLM.from_pretrained(paths[1]).eval()(ids).logits
            want = AutoModelForCausalLM.from_pretrained(variant).eval()(ids).logits
        assert torch.equal(got, want)
        assert [m.ref for m in reader.family("moe")] == ["moe@1", "moe-med@1"]


def test_delete_frees_remote_blobs_only_when_unused(s3, kit, tmp_path):
    url, meta = f"s3://{BUCKET}/{tmp_path.name}", tmp_path / "meta"
    variant = write_mixtral(tmp_path / "variant", kit.experts, "fused", seed=7)
    with _node(meta, url, tmp_path / "node1", s3) as writer:
        writer.artifacts.grace_s = 0  # no registration in flight here: collect at once
        writer.register(kit.fused, "moe")
        writer.register(variant, "moe-med")
        writer.delete("moe@1")
        assert writer.freed == []
    with _node(meta, url, tmp_path / "node3", s3, read_only=True) as fresh:
        assert verify(fresh, "moe-med").ok  # downloads from the bucket: the blobs are there
    with _node(meta, url, tmp_path / "node1", s3) as writer:
        writer.artifacts.grace_s = 0
        writer.delete("moe-med@1")
        assert len(writer.freed) == EXPERT_TENSORS
        assert writer.artifacts.fs.find(f"{BUCKET}/{tmp_path.name}") == []


def test_killed_upload_is_swept_by_the_next_writer(s3, kit, tmp_path):
    """A registration killed after uploading (no row) leaves staging keys and blobs; once
    older than the grace period they are removed."""
    url, meta = f"s3://{BUCKET}/{tmp_path.name}", tmp_path / "meta"
    with _node(meta, url, tmp_path / "node1", s3) as writer:
        store = writer.artifacts
        with store.staging() as staged:
            store.upload(staged, store.stage(kit.fused, staged))
            store._pending.clear()  # as if killed here: its own clean-up never runs
        prefix = f"{BUCKET}/{tmp_path.name}"
        assert store.fs.find(f"{prefix}/staging") and store.fs.find(f"{prefix}/blobs")
    with _node(meta, url, tmp_path / "node1", s3) as kept:  # within the grace period
        assert kept.recovered == []
    store.grace_s = 0
    with Registry(meta, artifacts=store) as writer:
        assert len([r for r in writer.recovered if r.startswith("blobs/")]) == EXPERT_TENSORS
        assert store.fs.find(prefix) == []


def test_shared_folder_url(kit, tmp_path):
    """Any fsspec URL: a folder on a shared filesystem, read through a local cache."""
    shared = tmp_path / "shared"
    with Registry(tmp_path / "meta", artifacts=shared.as_uri(),
                  cache_dir=tmp_path / "cache") as reg:
        reg.register(kit.per_expert, "moe")
        reg.register(kit.fused, "moe")
    blobs = [p for p in (shared / "blobs").rglob("*.safetensors")]
    assert len(blobs) == EXPERT_TENSORS
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in blobs)
    with Registry(tmp_path / "meta", artifacts=shared.as_uri(), cache_dir=tmp_path / "other",
                  read_only=True) as reader:
        assert reader.resolve("moe@2").is_relative_to(tmp_path / "other")
        assert verify(reader, "moe@1").ok and verify(reader, "moe@2").ok
        assert len([d for d in reader.artifacts.downloads if "/blobs/" in d]) == EXPERT_TENSORS


def test_cache_dir_from_environment(kit, tmp_path, monkeypatch):
    monkeypatch.setenv("MOFE_REGISTRY_CACHE", str(tmp_path / "env-cache"))
    with Registry(tmp_path / "meta", artifacts=(tmp_path / "shared").as_uri()) as reg:
        reg.register(kit.bare, "moe")
        assert reg.artifacts.cache.is_relative_to(tmp_path / "env-cache")


def test_a_damaged_object_is_refused_on_download(kit, tmp_path):
    """Every downloaded file is checked against the SHA-256 its row recorded."""
    from model_registry.errors import RegistryError

    shared = tmp_path / "shared"
    with Registry(tmp_path / "meta", artifacts=shared.as_uri(),
                  cache_dir=tmp_path / "cache") as reg:
        reg.register(kit.per_expert, "moe")
    blob = sorted((shared / "blobs").rglob("*.safetensors"))[0]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with Registry(tmp_path / "meta", artifacts=shared.as_uri(), cache_dir=tmp_path / "other",
                  read_only=True) as reader:
        with pytest.raises(RegistryError, match="downloaded sha256 .* differs from the recorded"):
            reader.resolve("moe")
        assert not (reader.artifacts.cache / "versions" / "moe" / "v1").exists()
        assert not reader.artifacts.blobs.has(blob.relative_to(shared / "blobs").as_posix())


def test_a_tampered_file_path_cannot_leave_the_cache(kit, tmp_path):
    import sqlite3

    from model_registry.errors import UnsafePathError

    shared = tmp_path / "shared"
    with Registry(tmp_path / "meta", artifacts=shared.as_uri(),
                  cache_dir=tmp_path / "cache") as reg:
        reg.register(kit.per_expert, "moe")
    with sqlite3.connect(tmp_path / "meta" / "registry.db") as db:
        db.execute("UPDATE files SET path = '../../escaped.json' WHERE path = 'config.json'")
    with Registry(tmp_path / "meta", artifacts=shared.as_uri(), cache_dir=tmp_path / "other",
                  read_only=True) as reader, pytest.raises(UnsafePathError, match="leaves"):
        reader.resolve("moe")
    assert not list(tmp_path.rglob("escaped.json"))


def test_team_url_postgresql_and_bucket_from_the_environment(s3, kit, postgres_cluster,
                                                             tmp_path, monkeypatch):
    """The deploy/ form: MOFE_REGISTRY=postgresql://...?artifacts=s3://..., S3 endpoint and
    keys from the environment as boto reads them, one cache folder per node."""
    from click.testing import CliRunner

    from model_registry.cli import registry_cli
    from model_registry.pg_store import PostgresMetadataStore

    dbname = postgres_cluster.create_database()
    url = f"{postgres_cluster.conninfo(dbname)}&artifacts=s3://{BUCKET}/team-url"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MOFE_REGISTRY", url)
    monkeypatch.setenv("MOFE_REGISTRY_CACHE", str(tmp_path / "node-a"))
    with Registry() as reg:
        assert isinstance(reg.meta, PostgresMetadataStore)
        assert reg.register(kit.per_expert, "moe", aliases=["prod"]).ref == "moe@1"
    monkeypatch.setenv("MOFE_REGISTRY_CACHE", str(tmp_path / "node-b"))  # another machine
    res = CliRunner().invoke(registry_cli, ["resolve", "moe@prod"])
    assert res.exit_code == 0, res.output
    resolved = res.stdout.strip()
    assert resolved.startswith(str(tmp_path / "node-b"))
    assert (Path(resolved) / "config.json").is_file()
    with Registry(read_only=True) as reader:
        assert verify(reader, "moe@prod").ok
