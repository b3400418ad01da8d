"""Real processes: a registration killed at any stage leaves no trace; concurrent ones all land.

Uses the MOFE_REGISTRY_TEST_PAUSE_AT hook (model_registry/_hooks.py) to stop a registering
subprocess at a chosen stage, then SIGKILLs it or releases it. On both metadata back-ends:
with PostgreSQL the killed client's open transaction is rolled back by the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from model_registry._hooks import PAUSE_ENV, RESUME_ENV, STAGES
from model_registry.registry import Registry
from model_registry.verify import verify

pytestmark = pytest.mark.timeout(180)


def _start(location: str, src, name: str, pause: str | None = None,
           resume=None, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in (PAUSE_ENV, RESUME_ENV)}
    env["MOFE_REGISTRY"] = location
    if pause:
        env[PAUSE_ENV] = pause
    if resume:
        env[RESUME_ENV] = str(resume)
    return subprocess.Popen([sys.executable, "-m", "model_registry.cli", "register", str(src),
                             "--name", name, *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_paused(proc: subprocess.Popen, stage: str) -> None:
    for line in proc.stderr:
        if line.strip() == f"MOFE-PAUSED {stage}":
            return
    raise AssertionError(f"register exited ({proc.wait()}) without pausing at {stage}")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


@pytest.mark.parametrize(("stage", "mode"), [(s, "--copy") for s in STAGES]
                         + [("inserted", "--link")])
def test_killed_registration_leaves_no_half_entry(kit, backend, stage, mode):
    root = backend.root
    proc = _start(backend.location, kit.fused, "moe", stage, None, "--alias", "prod", mode)
    _wait_paused(proc, stage)
    _kill(proc)
    backend.check_consistent()
    with Registry(backend.location) as reg:  # opening cleans the leftovers of the killed process
        assert reg.list_models() == []
        assert reg.meta.alias_target("moe", "prod") is None
        assert os.listdir(root / "tmp") == [] and list(reg.artifacts.keys()) == []
        assert list(reg.artifacts.blobs.keys()) == []  # the blobs it added are swept too
        if mode == "--copy":
            assert any(r.startswith("tmp/stage-") for r in reg.recovered)
            assert any(r.startswith("blobs/") for r in reg.recovered)
        assert ("artifacts/moe/v1" in reg.recovered) == (stage in ("placed", "inserted")
                                                         and mode == "--copy")
        info = reg.register(kit.fused, "moe")
        assert info.version == 1 and verify(reg, "moe@1").ok


def test_open_during_a_registration_neither_waits_nor_cleans_it(kit, backend):
    root = backend.root
    Registry(backend.location).close()
    proc = _start(backend.location, kit.per_expert, "moe", "inserted")
    try:
        _wait_paused(proc, "inserted")  # it holds the write lock, rows not committed
        with Registry(backend.location) as reg:
            assert reg.recovered == []  # its staging dir is live: left alone
            assert len(os.listdir(root / "tmp")) == 1
            assert reg.list_models() == []  # uncommitted rows are invisible
    finally:
        _kill(proc)
    with Registry(backend.location) as reg:
        assert reg.recovered and os.listdir(root / "tmp") == []
        assert reg.register(kit.per_expert, "moe").version == 1  # the lock went with it


def test_concurrent_registrations_get_distinct_versions(kit, backend, tmp_path):
    root, location = backend.root, backend.location
    Registry(location).close()
    go = tmp_path / "go"
    sources = [kit.fused, kit.per_expert, kit.bare, kit.fused, kit.per_expert]
    procs = [_start(location, src, "moe", "hashed", go) for src in sources]
    procs.append(_start(location, kit.bare, "other", "hashed", go, "--link"))
    for p in procs:
        _wait_paused(p, "hashed")  # all staged and hashed; none holds the write lock yet
    go.touch()  # release all six into version allocation at once
    outs = [p.communicate()[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6
    assert sorted(outs[:5]) == [f"moe@{v}" for v in range(1, 6)] and outs[5] == "other@1"
    backend.check_consistent()
    with Registry(location) as reg:
        assert [v.version for v in reg.versions("moe")] == [1, 2, 3, 4, 5]
        assert all(verify(reg, ref).ok for ref in outs)
        assert os.listdir(root / "tmp") == []
        # five copies of the same experts, written concurrently: each tensor stored once
        assert len(list(reg.artifacts.blobs.keys())) == 4 * 2 * 3
