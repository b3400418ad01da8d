"""The cpu-dev pod, replayed locally: init container, server command, probes, metrics, stop.

Runs the real scripts and the real `mofe serve` with the Deployment's expanded arguments and
environment (container paths mapped into a temp dir, no tini), then checks what Kubernetes
and Prometheus would: the startup, readiness and liveness probes pass, every metric the
dashboard, alerts and autoscalers query is on /metrics, and SIGTERM ends the pod in time and
cleanly (mofe_serve.server_process: no process, /dev/shm entry or forced kill left).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import promql_parser as promql
import pytest
from deploy_support import (
    container_env,
    expand,
    generated,
    one,
    pod_spec,
    promql_expressions,
)

from mofe_serve.server_process import MOFE as MOFE_SCRIPT
from mofe_serve.server_process import ServerProcess, free_port

pytestmark = [pytest.mark.engine, pytest.mark.slow]
MOFE = Path(MOFE_SCRIPT)
API_KEY = "pod-test-key"


@pytest.fixture(scope="module")
def pod(rendered, tiny_mofe, tmp_path_factory):
    """(objs, server container, mapped env, ServerProcess) of a started cpu-dev server."""
    assert MOFE.exists(), f"{MOFE} missing: the `mofe` console script comes with `make setup`"
    root = tmp_path_factory.mktemp("pod")
    mapping = {"/models": root / "models", "/home/mofe": root / "home", "/tmp": root / "tmp"}

    def local(value: str) -> str:
        for inside, outside in mapping.items():
            if value == inside or value.startswith(inside + "/"):
                return str(outside) + value[len(inside):]
        return value

    for path in mapping.values():
        path.mkdir(parents=True)
    objs = rendered["cpu-dev"]
    spec = pod_spec(one(objs, "Deployment", "mofe-serve"))
    base_env = {"PATH": f"{MOFE.parent}{os.pathsep}{os.environ['PATH']}", "LANG": "C.UTF-8"}

    # Init container register-model, with the session's test model where build-tiny-model
    # puts a checkpoint.
    register = next(c for c in spec["initContainers"] if c["name"] == "register-model")
    env = {**base_env, **{k: local(v) for k, v in container_env(objs, register).items()}}
    shutil.copytree(tiny_mofe, env["MOFE_INCOMING_DIR"])
    script = generated(objs, "ConfigMap", "mofe-model-store-scripts")["data"]["register-model.sh"]
    init = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert init.returncode == 0, init.stderr

    server = spec["containers"][0]
    env = {**base_env, **{k: local(v) for k, v in container_env(objs, server).items()},
           "MOFE_API_KEY": API_KEY,  # from the Secret
           # The CPU image has no C++ compiler: fail loudly if anything tries to JIT-compile.
           "CXX": str(root / "no-compiler-in-the-image")}
    args = [local(a) for a in expand(server["args"], env)]
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    assert server["command"][:2] == ["tini", "--"]
    # The pod's environment only: nothing inherited from the test process.
    proc = ServerProcess([MOFE, *server["command"][3:], *args], root / "serve.log", port, env,
                         api_key=API_KEY)
    yield objs, server, env, proc
    proc.stop(timeout=10)  # no-op after test_pod_lifecycle stopped it; kills after a failure


def _get(port: int, path: str, **kw) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10, **kw)


def test_pod_lifecycle(pod):
    objs, server, env, proc = pod
    port = proc.port
    # startupProbe: /health within its budget (failureThreshold x periodSeconds).
    startup = server["startupProbe"]
    proc.wait_ready(timeout=startup["failureThreshold"] * startup["periodSeconds"],
                    path=startup["httpGet"]["path"])

    # readinessProbe: the exec command itself, with the pod's environment.
    script = server["readinessProbe"]["exec"]["command"][-1].replace(":8000/", f":{port}/")
    ready = subprocess.run([sys.executable, "-c", script], env=env,
                           capture_output=True, text=True, timeout=30, check=False)
    assert ready.returncode == 0, ready.stderr
    assert _get(port, server["livenessProbe"]["httpGet"]["path"]).status_code == 200

    # Traffic through the served alias, then every queried series is on /metrics.
    ref = env["MOFE_MODEL_REF"]
    reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                       headers={"Authorization": f"Bearer {API_KEY}"},
                       json={"model": ref, "prompt": "The patient has a fever", "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    wanted = set()
    for text in promql_expressions({"cpu-dev": objs, "gpu": []}).values():
        promql.walk(promql.parse(text), lambda n: wanted.add(n.name)
                    if isinstance(n, promql.VectorSelector) and not n.name.startswith("mofe:")
                    else None)
    from prometheus_client.parser import text_string_to_metric_families

    for _ in range(60):  # the routing poller publishes counts within a few seconds
        names = {s.name for f in text_string_to_metric_families(_get(port, "/metrics").text)
                 for s in f.samples}
        if "mofe_expert_tokens_total" in names:
            break
        time.sleep(1)
    assert wanted and not wanted - names, f"not on /metrics: {sorted(wanted - names)}"
    # Counts reach the API server with the next poll after the request (about a second).
    deadline = time.monotonic() + 30
    while True:
        routing = _get(port, "/v1/routing", headers={"Authorization": f"Bearer {API_KEY}"}).json()
        if sum(routing["tokens"][0]) > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(routing["tokens"][0]) > 0, json.dumps(routing)

    # Termination: after preStop, SIGTERM; the pod must be gone before the grace period ends.
    spec = pod_spec(one(objs, "Deployment", "mofe-serve"))
    budget = spec["terminationGracePeriodSeconds"] - server["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Nothing may be left: no process, /dev/shm entry or "force killing" line.
    leftovers = proc.stop(timeout=budget)
    assert not leftovers, f"unclean pod termination after SIGTERM: {leftovers}"
