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


def routing_after(server, t: float, timeout: float = 30) -> dict:
    """The first routing snapshot whose worker read started after unix time `t`."""
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
