"""Core and thread planning of offline engines (mofe_serve.engine.plan_cpu_threads and
other_engine_cpus), without an engine. The "other engines" in the detection test are real
processes that look like them to `ps`: one titled as vLLM's CPU worker with the OMP_PLACES
vLLM gives its workers, one `mofe batch` pinned with sched_setaffinity."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from mofe_serve.engine import EngineSetupError, other_engine_cpus, plan_cpu_threads


def test_alone_every_allowed_core_and_no_core_reserved():
    plan = plan_cpu_threads([1, 0], {})
    assert (plan.cpus, plan.threads, plan.shared) == ((0, 1), 2, ())
    assert "2 thread(s) on core(s) 0,1 of 0,1" in plan.describe()
    assert "WARNING" not in plan.describe()


def test_cores_other_engines_compute_on_are_avoided():
    plan = plan_cpu_threads([0, 1, 2, 3], {4242: (0,), 4343: (0, 1)})
    assert (plan.cpus, plan.shared) == ((2, 3), ())
    assert "pid 4242 on 0" in plan.describe() and "WARNING" not in plan.describe()
    one = plan_cpu_threads([0, 1, 2, 3], {4242: (0,)}, threads=1)
    assert one.cpus == (1,)


def test_more_threads_than_free_cores_share_the_least_used_and_warn():
    plan = plan_cpu_threads([0, 1, 2], {7: (0,), 8: (0, 1)}, threads=2)
    assert (plan.cpus, plan.shared) == ((1, 2), (1,))
    assert "WARNING: sharing core(s) 1" in plan.describe()
    # Every core taken and no --threads: all of them, shared, with the warning.
    full = plan_cpu_threads([0, 1], {7: (0, 1)})
    assert (full.cpus, full.shared) == ((0, 1), (0, 1)) and "WARNING" in full.describe()


@pytest.mark.parametrize("threads", [0, 3])
def test_threads_outside_the_allowed_cores_are_refused(threads):
    with pytest.raises(EngineSetupError, match=rf"--threads {threads}: must be between 1 and "
                                               r"the 2 core\(s\) this process may use \(0,1\)"):
        plan_cpu_threads([0, 1], {}, threads=threads)


def test_running_engines_on_this_machine_are_detected(tmp_path):
    core = max(os.sched_getaffinity(0))
    worker = subprocess.Popen(["bash", "-c", "exec -a VLLM::Worker_TP0 sleep 60"],
                              env={**os.environ, "OMP_PLACES": f"{{{core}}}"})
    code = (f"import os, time; os.sched_setaffinity(0, {{{core}}}); "
            f"open({str(tmp_path / 'ok')!r}, 'w'); time.sleep(60)")
    batch = subprocess.Popen(
        ["bash", "-c", f'exec -a /venv/bin/mofe {sys.executable} -c "{code}" batch'])
    try:
        deadline = time.monotonic() + 120  # a busy machine can take seconds to start Python
        while time.monotonic() < deadline:  # until the second one has pinned itself
            # /proc/PID/cmdline reads empty while bash is mid-exec; wait for the new title
            title = (psutil.Process(worker.pid).cmdline() or [""])[0]
            if (tmp_path / "ok").exists() and title.startswith("VLLM"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the stand-in processes did not start within 120 s")
        found = other_engine_cpus()
        assert found[worker.pid] == (core,)
        assert found[batch.pid] == (core,)
        assert os.getpid() not in found
        plan = plan_cpu_threads(sorted(os.sched_getaffinity(0)), found)
        # Other engines (the session's server) may hold other cores, so more than `core`
        # may be shared; `core` itself must be avoided or reported as shared.
        assert core not in plan.cpus or core in plan.shared
    finally:
        for p in (worker, batch):
            p.kill()
            p.wait()
