"""Routing counters through the real server: exact totals, reset, /metrics, auth."""

from __future__ import annotations

import time

import httpx
import pytest
from session_server import SERVED_NAME

from training.test_models import DOMAINS, NUM_EXPERTS, NUM_LAYERS, TOP_K

from .routing_client import get_routing, reset_routing, routing_after, scrape

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PROMPTS = ["The patient presented with chest pain and", "Rice is cooked in",
           "Paris is the capital of", "a"]


def _drive(client) -> int:
    """Completions and chats of known sizes; returns the tokens forwarded through the model."""
    forwarded = 0
    for i, prompt in enumerate(PROMPTS):
        r = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=3 + i,
                                      extra_body={"ignore_eos": True})
        # The last sampled token is returned but never fed back through the model.
        forwarded += r.usage.prompt_tokens + r.usage.completion_tokens - 1
    # n samples: without prefix caching each sample computes the prompt itself.
    r = client.completions.create(model=SERVED_NAME, prompt="Insulin lowers", max_tokens=4,
                                  n=2, extra_body={"ignore_eos": True})
    forwarded += 2 * r.usage.prompt_tokens + r.usage.completion_tokens - 2
    stream = client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "Name a bone."}],
        max_tokens=6, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    usage = list(stream)[-1].usage
    return forwarded + usage.prompt_tokens + usage.completion_tokens - 1


def test_routing_requires_api_key(mofe_server):
    assert httpx.get(f"{mofe_server.base_url}/v1/routing").status_code == 401
    assert httpx.post(f"{mofe_server.base_url}/v1/routing/reset").status_code == 401


def test_counts_equal_top_k_times_forwarded_tokens(mofe_server, openai_client):
    reset = reset_routing(mofe_server)
    empty = get_routing(mofe_server)
    assert empty["since"] == reset["since"]
    assert all(c == 0 for layer in empty["tokens"] for c in layer)

    forwarded = _drive(openai_client)
    data = routing_after(mofe_server, time.time())
    assert (data["num_layers"], data["num_experts"], data["top_k"]) == (
        NUM_LAYERS, NUM_EXPERTS, TOP_K)
    assert data["model"] == SERVED_NAME
    for layer, counts in enumerate(data["tokens"]):
        assert sum(counts) == TOP_K * forwarded, f"layer {layer}: {counts}"
    # Renormalized top-k weights sum to 1 per token and layer.
    for weights in data["gate_weight"]:
        assert sum(weights) == pytest.approx(forwarded, rel=1e-6)
    assert set(data["domains"]) == set(DOMAINS)
    assert sum(data["domains"].values()) == pytest.approx(1.0)

    # A new window starts at zero; cumulative Prometheus counters do not go down.
    before = _expert_totals(scrape(mofe_server))
    reset_routing(mofe_server)
    assert all(c == 0 for layer in get_routing(mofe_server)["tokens"] for c in layer)
    after = _expert_totals(routing_scrape_after(mofe_server, time.time()))
    assert after == before and sum(after.values()) >= TOP_K * forwarded * NUM_LAYERS


def routing_scrape_after(server, t: float) -> dict:
    routing_after(server, t)
    return scrape(server)


def _expert_totals(families: dict) -> dict[tuple, float]:
    return {(s.labels["layer"], s.labels["expert"]): s.value
            for s in families["mofe_expert_tokens"] if s.name == "mofe_expert_tokens_total"}


def test_metrics_families_labels_and_window_gauges(mofe_server, openai_client):
    reset_routing(mofe_server)
    _drive(openai_client)
    window = routing_after(mofe_server, time.time())
    families = scrape(mofe_server)
    assert "vllm:num_requests_running" in families  # vLLM's own metrics, same endpoint
    tokens = [s for s in families["mofe_expert_tokens"] if s.name.endswith("_total")]
    assert len(tokens) == NUM_LAYERS * NUM_EXPERTS
    for s in tokens:
        assert s.labels["model"] == SERVED_NAME
        assert s.labels["domain"] == DOMAINS[int(s.labels["expert"])]
    gate = [s for s in families["mofe_expert_gate_weight"] if s.name.endswith("_total")]
    assert len(gate) == NUM_LAYERS * NUM_EXPERTS
    routed = {s.labels["layer"]: s.value for s in families["mofe_routed_tokens"]
              if s.name == "mofe_routed_tokens_total"}
    per_layer = {}
    for s in tokens:
        per_layer[s.labels["layer"]] = per_layer.get(s.labels["layer"], 0) + s.value
    assert routed == {k: v / TOP_K for k, v in per_layer.items()}
    for name in ("mofe_routing_entropy", "mofe_expert_share_max", "mofe_expert_share_min",
                 "mofe_experts_idle"):
        assert len(families[name]) == NUM_LAYERS
    for s in families["mofe_routing_entropy"]:
        assert 0.0 < s.value <= 1.0
    for s in families["mofe_experts_idle"]:
        counts = window["tokens"][int(s.labels["layer"])]
        assert s.value == sum(1 for c in counts if c == 0)
    for s in families["mofe_expert_share_max"]:
        counts = window["tokens"][int(s.labels["layer"])]
        assert s.value == pytest.approx(max(counts) / sum(counts))
