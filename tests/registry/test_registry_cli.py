"""The `mofe registry` commands end to end (click runner in-process, plus a subprocess probe)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from registry_support import flip_byte

from model_registry.cli import registry_cli


@pytest.fixture
def run(backend):
    def _run(*args: str, code: int = 0):
        res = CliRunner().invoke(registry_cli, ["--registry", backend.location, *args])
        assert res.exit_code == code, (res.stdout, res.stderr, res.exception)
        return res
    return _run


def test_register_list_show_versions(run, kit):
    assert run("register", str(kit.fused), "--name", "moe", "--alias", "prod").stdout == "moe@1\n"
    res = run("register", str(kit.fused), "--name", "moe", "--link")
    assert res.stdout == "moe@2\n" and "stock vLLM needs `mofe convert`" in res.stderr
    [model] = json.loads(run("list", "--json").stdout)
    assert (model["name"], model["latest"], model["aliases"]) == ("moe", 2, {"prod": 1})
    versions = json.loads(run("versions", "moe", "--json").stdout)
    # a copy is content-addressed (per-expert shards, experts shared); a link is as given
    assert [(v["ref"], v["storage"], v["vllm_loadable"]) for v in versions] == [
        ("moe@1", "copy", True), ("moe@2", "link", False)]
    shown = json.loads(run("show", "moe@prod", "--json").stdout)
    assert shown["ref"] == "moe@1" and shown["converted"]
    assert shown["frozen_check"] == "passed" and shown["layout"] == "per_expert"
    assert shown["path"].endswith("artifacts/moe/v1")
    table = run("show", "moe@1").stdout
    assert "from fused, converted" in table and "Frozen experts" in table
    assert "moe" in run("list").stdout and "Versions of moe" in run("versions", "moe").stdout


def test_alias_resolve_eval_delete(run, kit):
    run("register", str(kit.per_expert), "--name", "moe")
    run("register", str(kit.bare), "--name", "moe")
    assert run("alias", "moe", "1", "prod").stdout == "moe@prod -> moe@1\n"
    assert run("alias", "moe", "2", "prod").stdout == "moe@prod -> moe@2 (was 1)\n"
    assert run("resolve", "moe@prod").stdout == run("resolve", "moe").stdout
    assert run("resolve", str(kit.bare)).stdout.strip() == str(kit.bare.resolve())
    run("eval", "add", "moe@prod", "--task", "medmcqa", "--metric", "acc", "--value", "0.42",
        "--split", "validation", "--harness", "lm-eval")
    evals = json.loads(run("show", "moe@2", "--json").stdout)["evals"]
    assert [(e["task"], e["value"], e["harness"]) for e in evals] == [("medmcqa", 0.42, "lm-eval")]
    assert "medmcqa" in run("show", "moe@2").stdout
    res = run("delete", "moe@2", code=1)
    assert "alias(es) prod" in res.stderr and "--force" in res.stderr
    run("delete", "moe@2", "--force")
    assert run("unalias", "moe", "prod", code=1).stderr.startswith("error: model 'moe' has no")
    assert run("delete", "moe", code=2).exit_code == 2  # must name a version explicitly
    assert [v["version"] for v in json.loads(run("versions", "moe", "--json").stdout)] == [1]


def test_verify_exit_status(run, kit):
    run("register", str(kit.fused), "--name", "moe")
    # 3 files + own weights + 2 indices + 24 expert shards (2 layers x 4 experts x w1/w2/w3)
    assert "moe@1: OK; 30 files, 24 expert tensors checked" in run("verify", "moe").stdout
    path = run("resolve", "moe").stdout.strip()
    flip_byte(Path(path) / "model-own.safetensors", 1000)
    res = run("verify", "moe", code=1)
    assert "MISMATCH model-own.safetensors: sha256" in res.stderr and "FAILED" in res.stdout
    assert json.loads(run("verify", "moe", "--json", code=1).stdout)["ok"] is False


def test_lineage_command(run, kit):
    run("register", str(kit.experts[0]), "--name", "med-expert")
    run("register", str(kit.fused), "--name", "moe")
    out = run("lineage", "moe").stdout
    assert "moe@1 (mixtral, frozen check: passed)" in out
    assert "registered as med-expert@1" in out and "medical" in out
    node = json.loads(run("lineage", "moe", "--json").stdout)
    assert node["experts"][0]["registered"] == "med-expert@1"


def test_errors_are_one_clear_line(run, kit, backend):
    res = run("register", str(kit.fused), "--name", "../x", code=1)
    assert res.stderr.startswith("error: invalid model name '../x'")
    assert "is not registered" in run("resolve", "ghost", code=1).stderr
    run("list")
    backend.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    assert "schema_version 99 is newer" in run("list", code=1).stderr


PROBE = """
import sys
from pathlib import Path
from click.testing import CliRunner
from model_registry.cli import registry_cli
root, ckpt = sys.argv[1], sys.argv[2]
for args in (["register", ckpt, "--name", "moe"], ["list"], ["show", "moe"], ["verify", "moe"],
             ["lineage", "moe"], ["resolve", "moe"], ["family", "moe"]):
    res = CliRunner().invoke(registry_cli, ["--registry", root, *args])
    assert res.exit_code == 0, (args, res.output)
print("HEAVY=" + ",".join(sorted(m for m in ("torch", "vllm", "transformers", "mergekit")
                                 if m in sys.modules)))
"""


def test_registry_commands_import_no_torch_or_vllm(kit, backend):
    out = subprocess.run([sys.executable, "-c", PROBE, backend.location, str(kit.fused)],
                         capture_output=True, text=True, check=True).stdout
    assert "HEAVY=\n" in out
