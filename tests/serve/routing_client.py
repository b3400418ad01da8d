"""Small HTTP helpers for the routing API and /metrics in tests."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def get_routing(server) -> dict:
    r = httpx.get(f"{server.base_url}/v1/routing",
                  headers={"Authorization": f"Bearer {server.api_key}"})
    r.raise_for_status()
    return r.json()


def reset_routing(server) -> dict:
    r = httpx.post(f"{server.base_url}/v1/routing/reset",
                   headers={"Authorization": f"Bearer {server.api_key}"})
    r.raise_for_status()
    return r.json()


def routing_after(server, t: float, timeout: float = 75) -> dict:
    """The first routing snapshot whose worker read started after unix time `t` (an idle
    server reads every 30 s, so wait longer than that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = get_routing(server)
        if data["updated_at"] > t:
            return data
        time.sleep(0.2)
    raise TimeoutError(f"routing counts not refreshed after {timeout}s")


def scrape(server) -> dict[str, list]:
    """Family name -> samples, from the server's Prometheus text."""
    text = httpx.get(f"{server.base_url}/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def transformers_routing_counts(ckpt, prompts: list[list[int]]) -> list[list[int]]:
    """[layer][expert] top-k choices of transformers' MixtralForCausalLM (fp32) over the
    prompts' tokens: the reference for the experts vLLM ran."""
    import torch
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    experts, top_k = model.config.num_local_experts, model.config.num_experts_per_tok
    counts = None
    with torch.no_grad():
        for ids in prompts:
            out = model(torch.tensor([ids]), output_router_logits=True)
            for layer, logits in enumerate(out.router_logits):
                chosen = torch.topk(logits.reshape(-1, experts), top_k, dim=-1).indices
                per_expert = torch.bincount(chosen.reshape(-1), minlength=experts)
                if counts is None:
                    counts = [[0] * experts for _ in out.router_logits]
                for e in range(experts):
                    counts[layer][e] += int(per_expert[e])
    return counts
