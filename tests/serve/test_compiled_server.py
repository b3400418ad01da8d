"""A second, torch.compile'd `mofe serve` (CPU inductor): exact counts, summed metrics,
and a clean SIGTERM shutdown with no engine process left behind."""

from __future__ import annotations

import time

import openai
import pytest

from .conftest import ENGINE_ARGS
from .routing_client import reset_routing, routing_after, scrape
from .server_proc import MofeServer
from .tiny_mixtral import NUM_EXPERTS, TOP_K

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_compiled_engine_counts_exactly_and_shuts_down_cleanly(tiny_mixtral, tmp_path):
    # No --api-key here (the session server has one): both app set-ups are exercised.
    server = MofeServer(tiny_mixtral, tmp_path / "compiled.log", api_key=None,
                        extra=["--routing-metrics-summed", *ENGINE_ARGS],
                        env={"MOFE_CACHE_DIR": str(tmp_path / "cache")})
    try:
        server.wait_ready()
        assert len(server.seen) >= 2, "expected engine-core and worker child processes"
        # Profiling, compile and warm-up forwards ran thousands of dummy tokens: none counted.
        fresh = scrape(server)["mofe_expert_tokens"]
        assert fresh and all(s.value == 0 for s in fresh)
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        name = client.models.list().data[0].id
        assert name == tiny_mixtral.name
        reset_routing(server)
        forwarded = 0
        for i, prompt in enumerate(["Fever and", "Bread dough rises when", "x y z"]):
            r = client.completions.create(model=name, prompt=prompt, max_tokens=4 + 3 * i,
                                          extra_body={"ignore_eos": True})
            forwarded += r.usage.prompt_tokens + r.usage.completion_tokens - 1
        data = routing_after(server, time.time())
        assert [sum(layer) for layer in data["tokens"]] == [TOP_K * forwarded] * 4
        fams = scrape(server)
        tokens = [s for s in fams["mofe_expert_tokens"] if s.name.endswith("_total")]
        assert {s.labels["layer"] for s in tokens} == {"all"} and len(tokens) == NUM_EXPERTS
        # vLLM's CPU runner logs this only when torch.compile is on.
        assert "Warming up model for the compilation" in server.log.read_text(errors="replace")
    finally:
        leftovers = server.stop()
    assert server.proc.returncode is not None
    assert not leftovers, f"processes left after SIGTERM: {leftovers}"
