"""A dedicated, short-lived `mofe serve` for what would disturb the session's server:
a schema-driven fuzz of every POST operation, then killing its engine core.

The fuzz is schemathesis' own CLI, run as a user's CI would run it, against the server's
/openapi.json with the API key, bounded in examples (seeded, deterministic). Its checks
(tests/serve/fuzz_hooks.py): no 5xx, every error body in OpenAI's shape. Then the engine
core process is killed (SIGKILL) and the routing API must answer 503, /metrics must show
the snapshot age growing. `VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1` keeps vLLM's API server up
after engine death (its watchdog would otherwise stop it within ~5 s).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from session_server import ENGINE_ARGS, SERVED_NAME

from mofe_serve.server_process import MofeServer

from .routing_client import scrape
from .test_http_surface import assert_openai_error

pytestmark = [pytest.mark.engine, pytest.mark.slow]

KEY = "robustness-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parents[2]
# Bounds: examples per POST operation; the run takes about a minute here.
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def dedicated_server(tiny_mofe, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("robustness")
    # A short max length keeps valid generations cheap during the fuzz.
    engine_args = [a if a != "512" else "128" for a in ENGINE_ARGS]
    server = MofeServer(tiny_mofe, log_dir / "mofe-serve.log", api_key=KEY,
                        extra=["--enforce-eager", "--served-model-name", SERVED_NAME,
                               *engine_args],
                        env={"MOFE_CACHE_DIR": str(log_dir / "cache"),
                             "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"})
    server.wait_ready()
    yield server
    server.stop()  # its engine was killed on purpose: leftovers are killed, not asserted


def test_schema_fuzz_of_every_post_operation(dedicated_server):
    schema = httpx.get(f"{dedicated_server.base_url}/openapi.json").json()
    posts = sorted(p for p, ops in schema["paths"].items() if "post" in ops)
    assert {"/v1/completions", "/v1/chat/completions", "/tokenize"} <= set(posts)
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run",
           f"{dedicated_server.base_url}/openapi.json", "-H", f"Authorization: Bearer {KEY}",
           "--include-method", "POST", "--phases", "examples,fuzzing",
           "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--mode", "all",
           "--checks", "no_server_error,openai_error_shape", "--workers", "1",
           "--request-timeout", "120"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.serve.fuzz_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # Every POST operation was exercised: uvicorn's access log of the server saw it.
    log = dedicated_server.log.read_text(errors="replace")
    for path in posts:
        pattern = re.escape(path).replace(r"\{", "{").replace(r"\}", "}")
        pattern = re.sub(r"\{[^}]+\}", "[^/ ]+", pattern)
        assert re.search(f"\"POST {pattern}(\\?[^ ]*)? HTTP/1.1\" [1-5]", log), path


def _kill_engine_core(server) -> None:
    core = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
            if p.name() == "VLLM::EngineCore"]
    assert len(core) == 1, core
    core[0].kill()
    core[0].wait(timeout=30)


def _routing_age(server) -> float:
    samples = scrape(server)["mofe_routing_snapshot_age_seconds"]
    assert [s.labels for s in samples] == [{"model": SERVED_NAME}]
    return samples[0].value


def test_engine_dead_routing_answers_503(dedicated_server):
    """Runs last in this module: it kills the dedicated server's engine core."""
    base = dedicated_server.base_url
    assert httpx.get(base + "/v1/routing", headers=AUTH).status_code == 200
    _kill_engine_core(dedicated_server)
    deadline = time.monotonic() + 60
    while httpx.get(base + "/health").status_code != 503:  # vLLM noticed the death
        assert time.monotonic() < deadline, "vLLM did not notice the dead engine"
        time.sleep(0.5)
    error = assert_openai_error(httpx.get(base + "/v1/routing", headers=AUTH), 503)
    assert "dead" in error["message"]
    assert_openai_error(httpx.post(base + "/v1/routing/reset", headers=AUTH, timeout=120), 503)
    # The age of the last successful read keeps growing while the engine is dead.
    first = _routing_age(dedicated_server)
    time.sleep(1.5)
    assert _routing_age(dedicated_server) >= first + 1.0
