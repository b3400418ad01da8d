"""The README quick tour's server, started exactly as written there:

    mofe registry register CKPT --name tiny --alias prod
    mofe serve tiny@prod --port 8000

No other flag and no VLLM_CPU_KVCACHE_SPACE: torch.compile on (CPU inductor), prefix caching
on, the KV cache sized by `mofe serve` from the model. Checks: healthy, a chat answer through
the official openai client, the KV size it logged is the one vLLM reserved, exact counts.
Port 8000 is used when free; if something else holds it, another free port is used (the
argument shape stays the same) and the test says so in its output.

Then, last, its engine core is killed (SIGKILL), with vLLM's defaults as a user has them (no
VLLM_KEEP_ALIVE_ON_ENGINE_DEATH): the routing API must answer 503 and /metrics must show
the snapshot age counting from before the death, and the server must then exit on its own
(vLLM's watchdog stops it within seconds). A server whose engine was killed cannot shut down
cleanly, so its leftovers are killed, not asserted; the session server's teardown
(tests/conftest.py) asserts a clean SIGTERM shutdown (no process, no
/dev/shm entry, no "force killing" line).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from mofe_serve.server_process import MOFE, MofeServer, free_port, shm_entries
from training.test_models import NUM_EXPERTS, NUM_LAYERS, TOP_K

from .routing_client import reset_routing, routing_after, scrape
from .test_http_surface import assert_openai_error

pytestmark = [pytest.mark.engine, pytest.mark.slow]
README_PORT = 8000


def _register(ckpt, env: dict) -> None:
    proc = subprocess.run([MOFE, "registry", "register", str(ckpt), "--name", "tiny",
                           "--alias", "prod"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_readme_quick_tour_serve(tiny_mofe, tmp_path):
    env = {**os.environ, "MOFE_REGISTRY": str(tmp_path / "registry"),
           "MOFE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    _register(tiny_mofe, env)
    port = free_port(README_PORT)
    if port != README_PORT:
        print(f"port {README_PORT} is busy on this machine: serving on {port} instead")
    server = MofeServer("tiny@prod", tmp_path / "quick-tour.log", env=env, port=port)
    assert server.proc.args[1:] == ["serve", "tiny@prod", "--port", str(port)]
    try:
        server.wait_ready()
        assert len(server.seen) >= 2, "expected engine-core and worker child processes"
        # Profiling, compile and warm-up forwards ran thousands of dummy tokens: none counted.
        fresh = scrape(server)["mofe_expert_tokens"]
        assert fresh and all(s.value == 0 for s in fresh)

        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused",
                               max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["tiny@1", "tiny@prod"]
        reset_routing(server)
        chat = client.chat.completions.create(
            model="tiny@prod", max_tokens=6, temperature=0,
            messages=[{"role": "user", "content": "What is heparin used for?"}])
        assert chat.choices[0].message.content and chat.usage.completion_tokens >= 1
        forwarded = chat.usage.prompt_tokens + chat.usage.completion_tokens - 1
        for i, prompt in enumerate(["Fever and", "Bread dough rises when"]):
            r = client.completions.create(model="tiny@1", prompt=prompt, max_tokens=4 + 3 * i,
                                          extra_body={"ignore_eos": True})
            forwarded += r.usage.prompt_tokens + r.usage.completion_tokens - 1
        # Prompts shorter than one KV block (128 tokens on CPU): prefix caching skips nothing.
        data = routing_after(server, time.time())
        assert [sum(layer) for layer in data["tokens"]] == [TOP_K * forwarded] * NUM_LAYERS
        assert len(data["tokens"][0]) == NUM_EXPERTS

        log = server.log.read_text(errors="replace")
        # The size mofe serve chose is the size vLLM's CPU worker reserved.
        chosen = re.search(r"reserving (\d+) bytes .* (\d+) B/token", log)
        assert chosen, "mofe serve did not log its KV-cache choice"
        reserve, per_token = int(chosen[1]), int(chosen[2])
        assert 0 < reserve <= 8 << 30
        assert f"Explicitly set ({round(reserve / (1 << 30), 2)}/" in log
        tokens = re.search(r"CPU KV cache size: ([\d,]+) tokens", log)
        assert int(tokens[1].replace(",", "")) == reserve // per_token // 128 * 128
        assert "Auto set" not in log
        # vLLM's CPU runner logs this only when torch.compile is on.
        assert "Warming up model for the compilation" in log

        _engine_death_is_reported(server)
    finally:
        server.stop()  # its engine was killed on purpose: leftovers are killed, not asserted
        for name in server.shm_used & shm_entries():  # only this server's own entries
            (Path("/dev/shm") / name).unlink(missing_ok=True)
    assert server.proc.returncode is not None


def _kill_engine_core(server) -> None:
    core = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
            if p.name() == "VLLM::EngineCore"]
    assert len(core) == 1, core
    core[0].kill()
    core[0].wait(timeout=30)


def _routing_age(server) -> float:
    samples = scrape(server)["mofe_routing_snapshot_age_seconds"]
    assert [s.labels for s in samples] == [{"model": "tiny@1"}]
    return samples[0].value


def _engine_death_is_reported(server) -> None:
    """With vLLM's defaults, as a user runs it: once the engine core is dead the routing API
    answers 503 and the snapshot age counts from before the death, until vLLM's watchdog
    stops the server on its own (within seconds)."""
    base = server.base_url
    assert httpx.get(base + "/v1/routing").status_code == 200
    killed_at = time.time()
    _kill_engine_core(server)
    deadline = time.monotonic() + 60
    while True:  # poll fast: the server lives only a few seconds after noticing
        assert time.monotonic() < deadline, "the routing API never reported the dead engine"
        r = httpx.get(base + "/v1/routing")
        if r.status_code != 200:
            break
        time.sleep(0.05)
    error = assert_openai_error(r, 503)
    assert "dead" in error["message"]
    # No read succeeded after the kill: the age is at least the time since it.
    age, now = _routing_age(server), time.time()
    assert age >= now - killed_at - 0.05, (age, now - killed_at)
    try:
        assert_openai_error(httpx.post(base + "/v1/routing/reset", timeout=120), 503)
    except httpx.TransportError:  # the watchdog won the race: the server must be gone
        assert server.proc.wait(timeout=30) is not None
    # vLLM's default (no VLLM_KEEP_ALIVE_ON_ENGINE_DEATH): the server then exits by itself.
    server.proc.wait(timeout=60)
