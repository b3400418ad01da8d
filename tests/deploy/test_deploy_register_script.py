"""register-model.sh (the model-store init container) against the real `mofe registry` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import K8S

SCRIPT = K8S / "components" / "model-store" / "register-model.sh"
MOFE = Path(sys.executable).with_name("mofe")

# sh, flock, find and sha256sum are the image's (Debian base) tools, not the project's.
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sh", "flock", "find", "sha256sum")),
    reason="needs sh, flock, GNU find, sha256sum")


def write_tiny_mixtral(out: Path, seed: int = 0) -> Path:
    """A 2-layer, 4-expert, top-2 Mixtral in vLLM's per-expert layout, no mofe.json
    (training/test_models.py, numpy only); `seed` changes its bytes. Its source experts go
    beside the model store, outside the incoming directory."""
    from training.test_models import write_llama, write_mixtral

    sources = out.parent.parent / f"sources-{seed}"
    experts = [write_llama(sources / f"expert-{i}", seed=seed * 10 + i) for i in range(4)]
    return write_mixtral(out, experts, "per_expert", seed=seed, manifest=False)


@pytest.fixture
def store(tmp_path) -> dict[str, str]:
    assert MOFE.exists(), f"{MOFE} missing: the `mofe` console script comes with `make setup`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOFE_")}
    env.update(PATH=f"{MOFE.parent}{os.pathsep}{env.get('PATH', '')}",
               MOFE_REGISTRY=str(tmp_path / "models" / "registry"),
               MOFE_INCOMING_DIR=str(tmp_path / "models" / "incoming" / "mofe-tiny"),
               MOFE_MODEL_NAME="mofe-tiny", MOFE_MODEL_ALIAS="prod")
    return env


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def versions(env: dict[str, str]) -> list[dict]:
    proc = subprocess.run([str(MOFE), "registry", "versions", "mofe-tiny", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def resolve(env: dict[str, str], ref: str) -> str:
    return subprocess.run([str(MOFE), "registry", "resolve", ref], env=env, capture_output=True,
                          text=True, timeout=60, check=True).stdout.strip()


def test_registers_once_then_again_only_when_the_checkpoint_changes(store):
    incoming = write_tiny_mixtral(Path(store["MOFE_INCOMING_DIR"]))
    first = run_script(store)
    assert first.returncode == 0, first.stderr
    assert "registered" in first.stdout and "mofe-tiny@1" in first.stdout
    prod = resolve(store, "mofe-tiny@prod")

    again = run_script(store)  # a pod restart
    assert again.returncode == 0, again.stderr
    assert "already registered" in again.stdout
    assert len(versions(store)) == 1 and resolve(store, "mofe-tiny@prod") == prod

    write_tiny_mixtral(incoming.parent / "next", seed=1)  # a new checkpoint arrives
    shutil.rmtree(incoming)
    (incoming.parent / "next").rename(incoming)
    third = run_script(store)
    assert third.returncode == 0, third.stderr
    assert len(versions(store)) == 2 and resolve(store, "mofe-tiny@prod") != prod


def test_replicas_starting_together_register_one_version(store):
    write_tiny_mixtral(Path(store["MOFE_INCOMING_DIR"]))
    procs = [subprocess.Popen(["sh", str(SCRIPT)], env=store, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert len(versions(store)) == 1


def test_missing_checkpoint_is_fine_only_when_already_registered(store):
    missing = run_script(store)
    assert missing.returncode == 1
    assert "config.json not found" in missing.stderr and "mofe-tiny@prod" in missing.stderr

    incoming = write_tiny_mixtral(Path(store["MOFE_INCOMING_DIR"]))
    assert run_script(store).returncode == 0
    shutil.rmtree(incoming)  # incoming cleaned up after registration (--copy is the default)
    later = run_script(store)
    assert later.returncode == 0 and "nothing to do" in later.stdout
