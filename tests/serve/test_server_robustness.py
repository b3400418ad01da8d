"""A schema-driven fuzz of every POST operation of the session's shared server.

The fuzz is schemathesis' own CLI, run as a user's CI would run it, against the server's
/openapi.json with the API key, bounded in examples (seeded, deterministic: no example
database, so nothing is replayed from an earlier run or written into the repo). Its checks
(tests/serve/fuzz_hooks.py): no 5xx, every error body in OpenAI's shape. Afterwards the server
must still be healthy and answer, and its routing window is reset (the fuzz posts to
/v1/routing/reset among others; tests that measure routing reset it themselves first).
Killing an engine core (routing API 503, snapshot age growing) is checked on the quick-tour
server at the end of its test (test_compiled_server.py), which needs no clean shutdown.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from session_server import SERVED_NAME

from .routing_client import get_routing, reset_routing

pytestmark = [pytest.mark.engine, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Bounds: examples per POST operation; the run takes about a minute here.
MAX_EXAMPLES = 40


def test_schema_fuzz_of_every_post_operation(mofe_server):
    auth = {"Authorization": f"Bearer {mofe_server.api_key}"}
    schema = httpx.get(f"{mofe_server.base_url}/openapi.json").json()
    posts = sorted(p for p, ops in schema["paths"].items() if "post" in ops)
    assert {"/v1/completions", "/v1/chat/completions", "/tokenize"} <= set(posts)
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run",
           f"{mofe_server.base_url}/openapi.json", "-H", f"Authorization: {auth['Authorization']}",
           "--include-method", "POST", "--phases", "examples,fuzzing",
           "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--mode", "all",
           "--checks", "no_server_error,openai_error_shape", "--workers", "1",
           "--request-timeout", "120", "--generation-database", "none"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.serve.fuzz_hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log_start = mofe_server.log.stat().st_size  # the shared log: earlier tests' requests too
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # Every POST operation was exercised: uvicorn's access log of the server saw it.
    with mofe_server.log.open("rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    for path in posts:
        pattern = re.escape(path).replace(r"\{", "{").replace(r"\}", "}")
        pattern = re.sub(r"\{[^}]+\}", "[^/ ]+", pattern)
        assert re.search(f"\"POST {pattern}(\\?[^ ]*)? HTTP/1.1\" [1-5]", log), path
    # The shared server survived the fuzz for the tests after this one.
    assert httpx.get(f"{mofe_server.base_url}/health").status_code == 200
    r = httpx.post(f"{mofe_server.base_url}/v1/completions", headers=auth, timeout=120,
                   json={"model": SERVED_NAME, "prompt": "The heart", "max_tokens": 2,
                         "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    reset_routing(mofe_server)
    assert all(c == 0 for layer in get_routing(mofe_server)["tokens"] for c in layer)
