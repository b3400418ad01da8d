"""RoutingCollector and the routing window, without a server (fast)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mofe_serve.metrics import RoutingCollector, window_stats
from mofe_serve.routing.serving import domain_shares
from mofe_serve.routing.state import RoutingState

TOKENS = [[6, 2, 0, 0], [2, 2, 2, 2]]  # 2 layers, 4 experts, top-2: 4 tokens per layer
GATES = [[3.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]


def _state() -> RoutingState:
    state = RoutingState(num_layers=2, num_experts=4, top_k=2)
    state.update({"tokens": TOKENS, "gate_weight": GATES})
    return state


def _scrape(collector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_names_labels_and_values_per_layer():
    fams = _scrape(RoutingCollector("m@1", ["medical", "general"], _state().snapshot))
    tokens = {(s.labels["layer"], s.labels["expert"]): (s.value, s.labels["domain"])
              for s in fams["mofe_expert_tokens"] if s.name == "mofe_expert_tokens_total"}
    assert tokens[("0", "0")] == (6, "medical")
    assert tokens[("0", "1")] == (2, "general")
    assert tokens[("1", "3")] == (2, "unknown")  # no domain recorded for expert 3
    gate = [s for s in fams["mofe_expert_gate_weight"]
            if s.name == "mofe_expert_gate_weight_total"]
    assert sum(s.value for s in gate) == 8.0
    routed = {s.labels["layer"]: s.value for s in fams["mofe_routed_tokens"]
              if s.name == "mofe_routed_tokens_total"}
    assert routed == {"0": 4.0, "1": 4.0}
    gauges = {name: {s.labels["layer"]: s.value for s in fams[name]}
              for name in ("mofe_routing_entropy", "mofe_expert_share_max",
                           "mofe_expert_share_min", "mofe_experts_idle")}
    assert gauges["mofe_routing_entropy"]["1"] == pytest.approx(1.0)
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4)
    assert gauges["mofe_routing_entropy"]["0"] == pytest.approx(h0)
    assert gauges["mofe_expert_share_max"] == {"0": 0.75, "1": 0.25}
    assert gauges["mofe_expert_share_min"] == {"0": 0.0, "1": 0.25}
    assert gauges["mofe_experts_idle"] == {"0": 2.0, "1": 0.0}


def test_summed_mode_uses_layer_all():
    fams = _scrape(RoutingCollector("m@1", [], _state().snapshot, per_layer=False))
    tokens = [s for s in fams["mofe_expert_tokens"] if s.name == "mofe_expert_tokens_total"]
    assert {s.labels["layer"] for s in tokens} == {"all"}
    assert [s.value for s in sorted(tokens, key=lambda s: s.labels["expert"])] == [8, 4, 2, 2]
    routed = [s for s in fams["mofe_routed_tokens"] if s.name == "mofe_routed_tokens_total"]
    assert [(s.labels["layer"], s.value) for s in routed] == [("all", 8.0)]


def test_no_snapshot_yet_exports_empty_families():
    fams = _scrape(RoutingCollector("m@1", [], lambda: None))
    assert "mofe_expert_tokens" in fams and fams["mofe_expert_tokens"] == []


def test_window_reset_keeps_cumulative_counts():
    state = _state()
    state.reset_window({"tokens": TOKENS, "gate_weight": GATES})
    state.update({"tokens": [[7, 2, 1, 0], [2, 2, 2, 4]], "gate_weight": GATES})
    snap = state.snapshot()
    assert snap.tokens == [[7, 2, 1, 0], [2, 2, 2, 4]]
    assert snap.window_tokens == [[1, 0, 1, 0], [0, 0, 0, 2]]
    stats = window_stats(snap.window_tokens[1])
    assert stats["idle"] == 3 and stats["share_max"] == 1.0 and stats["entropy"] == 0.0


def test_empty_window_stats_and_domain_shares():
    assert window_stats([0, 0, 0]) == {"entropy": 0.0, "share_max": 0.0, "share_min": 0.0,
                                       "idle": 3.0}
    assert domain_shares([[3, 1], [1, 3]], ["med", "gen"]) == {"med": 0.5, "gen": 0.5}
    assert domain_shares([[0, 0]], ["med"]) == {"med": 0.0, "unknown": 0.0}


def test_snapshot_age_gauge_counts_from_the_last_successful_read():
    state = RoutingState(num_layers=2, num_experts=4, top_k=2)
    state.update({"tokens": TOKENS, "gate_weight": GATES}, taken_at=1000.0)
    now = [1000.5]
    collector = RoutingCollector("m@1", [], state.snapshot, clock=lambda: now[0])
    age = _scrape(collector)["mofe_routing_snapshot_age_seconds"]
    assert [(s.labels, s.value) for s in age] == [({"model": "m@1"}, 0.5)]
    now[0] = 1090.0  # no successful read since: the age keeps growing
    assert _scrape(collector)["mofe_routing_snapshot_age_seconds"][0].value == 90.0
    assert _scrape(RoutingCollector("m@1", [], lambda: None))[
        "mofe_routing_snapshot_age_seconds"] == []
