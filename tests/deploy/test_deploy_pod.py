"""The cpu-dev pod, replayed locally: init container, server command, probes, metrics, stop.

Runs the real scripts and the real `mofe serve` with the Deployment's expanded arguments and
environment (container paths mapped into a temp dir, no tini), then checks what Kubernetes
and Prometheus would: the startup, readiness and liveness probes pass, every metric the
dashboard, alerts and autoscalers query is on /metrics, and SIGTERM ends the pod in time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import promql_parser as promql
import psutil
import pytest
from deploy_support import (
    container_env,
    expand,
    generated,
    one,
    pod_spec,
    promql_expressions,
)

pytestmark = [pytest.mark.engine, pytest.mark.slow]
MOFE = Path(sys.executable).with_name("mofe")
API_KEY = "pod-test-key"


def tiny_mixtral(out: Path, tokenizer_dir: Path) -> Path:
    """A random 2-layer, 4-expert, top-2 Mixtral (transformers' fused layout) + mofe.json."""
    import torch
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    from model_registry.manifest import ExpertRecord, Manifest

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = MixtralConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, dtype="float32")
    torch.manual_seed(0)
    MixtralForCausalLM(config).float().save_pretrained(out)
    tok.save_pretrained(out)
    Manifest(project_version="0.1.0", num_layers=2, num_experts=4, top_k=2, dtype="float32",
             experts=[ExpertRecord(source=f"random:{i}", index=i, domain=d) for i, d in
                      enumerate(["medical", "general", "medical", "general"])]).save(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pod(rendered, kit, tmp_path_factory):
    """(objs, server container, mapped env, port, Popen) of a started cpu-dev server."""
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

    # Init container register-model, with a checkpoint where build-tiny-model puts one.
    register = next(c for c in spec["initContainers"] if c["name"] == "register-model")
    env = {**base_env, **{k: local(v) for k, v in container_env(objs, register).items()}}
    tiny_mixtral(Path(env["MOFE_INCOMING_DIR"]), kit / "tokenizer")
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
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen([str(MOFE), *server["command"][3:], *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    yield objs, server, env, port, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def _get(port: int, path: str, **kw) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10, **kw)


def test_pod_lifecycle(pod):
    objs, server, env, port, proc = pod
    log = Path(env["HOME"]).parent / "serve.log"
    # startupProbe: /health within its budget (failureThreshold x periodSeconds).
    startup = server["startupProbe"]
    deadline = time.monotonic() + startup["failureThreshold"] * startup["periodSeconds"]
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
        try:
            if _get(port, startup["httpGet"]["path"]).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "startup probe budget exhausted"
        time.sleep(2)
    children = psutil.Process(proc.pid).children(recursive=True)

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
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=budget)
    # Helpers such as multiprocessing's resource tracker exit a moment after their parent:
    # give them a few seconds, then nothing may be left.
    _, alive = psutil.wait_procs(children, timeout=15)
    left = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left after SIGTERM: {[(c.pid, c.cmdline()) for c in left]}"
