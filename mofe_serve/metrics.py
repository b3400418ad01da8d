"""Per-expert routing metrics as a prometheus_client Collector (no torch, no vLLM).

Registered in the API server process, so the series appear on the same `/metrics` as
vLLM's own. Values come from `snapshot_fn()` (the poller's cache); a scrape never waits on
the engine. Metric names are a contract with deploy/ (dashboards, alerts): do not rename.

    mofe_expert_tokens_total{model,layer,expert,domain}       counter
    mofe_expert_gate_weight_total{model,layer,expert,domain}  counter
    mofe_routed_tokens_total{model,layer}                     counter
    mofe_routing_entropy{model,layer}     gauge, window, normalized to 0..1
    mofe_expert_share_max{model,layer}    gauge, window
    mofe_expert_share_min{model,layer}    gauge, window
    mofe_experts_idle{model,layer}        gauge, window: experts with no token
    mofe_routing_snapshot_age_seconds{model}  gauge: now - time of the last successful read
                                              of the worker counters (stale data alert)
    mofe_request_domain_share{model,domain}   histogram over requests that asked for their
                                              routing summary: each domain's share of the
                                              request's routed slots
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .routing.state import RoutingSnapshot

SUMMED_LAYER = "all"


def window_stats(counts: Sequence[float]) -> dict[str, float]:
    """Entropy (normalized by log E), max/min expert share and idle experts of one layer."""
    total = float(sum(counts))
    n = len(counts)
    if total <= 0:
        # No traffic in the window: every expert idle, no distribution to describe.
        return {"entropy": 0.0, "share_max": 0.0, "share_min": 0.0, "idle": float(n)}
    shares = [c / total for c in counts]
    entropy = -sum(p * math.log(p) for p in shares if p > 0)
    return {
        "entropy": entropy / math.log(n) if n > 1 else 0.0,
        "share_max": max(shares),
        "share_min": min(shares),
        "idle": float(sum(1 for c in counts if c == 0)),
    }


class RoutingCollector:
    """Collector over the latest routing snapshot.

    `per_layer=False` exports per-expert counters summed over layers (layer="all") to keep
    series counts down on big models; per-layer window gauges stay (one series per layer).
    """

    def __init__(self, model: str, domains: Sequence[str] | None,
                 snapshot_fn: Callable[[], RoutingSnapshot | None], per_layer: bool = True,
                 clock: Callable[[], float] = time.time):
        self.clock = clock
        self.per_layer = per_layer
        self.sources = [(model, list(domains or []), snapshot_fn)]

    @classmethod
    def for_models(cls, sources: Sequence[tuple[str, Sequence[str] | None,
                                                Callable[[], RoutingSnapshot | None]]],
                   per_layer: bool = True, clock: Callable[[], float] = time.time):
        """One collector for several models served by one engine (a MoFE family): every
        series once per model, told apart by the `model` label."""
        collector = cls(*sources[0], per_layer=per_layer, clock=clock)
        collector.sources = [(m, list(d or []), fn) for m, d, fn in sources]
        return collector

    @property
    def model(self) -> str:
        return self.sources[0][0]

    @staticmethod
    def _domain(domains: Sequence[str], expert: int) -> str:
        return domains[expert] if expert < len(domains) else "unknown"

    def domain(self, expert: int) -> str:
        return self._domain(self.sources[0][1], expert)

    def describe(self) -> list[Metric]:
        # Lets registry.register() check names without taking a snapshot.
        return list(self._families([]))

    def collect(self) -> Iterator[Metric]:
        yield from self._families([(m, d, fn()) for m, d, fn in self.sources])

    def _families(self, snaps: list[tuple[str, list[str], RoutingSnapshot | None]]
                  ) -> Iterator[Metric]:
        expert_labels = ["model", "layer", "expert", "domain"]
        tokens = CounterMetricFamily(
            "mofe_expert_tokens", "Tokens routed to each expert (each token counts once per "
            "each of its top-k experts)", labels=expert_labels)
        gate = CounterMetricFamily(
            "mofe_expert_gate_weight", "Sum of routing (gate) weights given to each expert",
            labels=expert_labels)
        routed = CounterMetricFamily(
            "mofe_routed_tokens", "Tokens through each MoE layer", labels=["model", "layer"])
        gauges = {
            "entropy": GaugeMetricFamily(
                "mofe_routing_entropy", "Entropy of the expert token distribution in the "
                "current window, divided by log(num_experts)", labels=["model", "layer"]),
            "share_max": GaugeMetricFamily(
                "mofe_expert_share_max", "Largest expert share of routed slots in the window",
                labels=["model", "layer"]),
            "share_min": GaugeMetricFamily(
                "mofe_expert_share_min", "Smallest expert share of routed slots in the window",
                labels=["model", "layer"]),
            "idle": GaugeMetricFamily(
                "mofe_experts_idle", "Experts that received no token in the window",
                labels=["model", "layer"]),
        }
        age = GaugeMetricFamily(
            "mofe_routing_snapshot_age_seconds", "Seconds since the routing counters were "
            "last read from the engine (grows while the engine is dead or stuck)",
            labels=["model"])
        for model, domains, snap in snaps:
            if snap is None:
                continue
            # taken_at is when the successful read was sent: the age never under-reports.
            age.add_metric([model], max(0.0, self.clock() - snap.taken_at))
            self._add_counters(model, domains, snap, tokens, gate, routed)
            for layer, counts in enumerate(snap.window_tokens):
                for key, value in window_stats(counts).items():
                    gauges[key].add_metric([model, str(layer)], value)
        yield tokens
        yield gate
        yield routed
        yield from gauges.values()
        yield age

    def _add_counters(self, model: str, domains: list[str], snap: RoutingSnapshot, tokens,
                      gate, routed) -> None:
        if self.per_layer:
            rows = [(str(i), t, g) for i, (t, g)
                    in enumerate(zip(snap.tokens, snap.gate_weight, strict=True))]
        else:
            rows = [(SUMMED_LAYER, [sum(c) for c in zip(*snap.tokens, strict=True)],
                     [sum(c) for c in zip(*snap.gate_weight, strict=True)])]
        for layer, layer_tokens, layer_gate in rows:
            for expert, (t, g) in enumerate(zip(layer_tokens, layer_gate, strict=True)):
                labels = [model, layer, str(expert), self._domain(domains, expert)]
                tokens.add_metric(labels, t)
                gate.add_metric(labels, g)
            routed.add_metric([model, layer], sum(layer_tokens) / snap.top_k)


# Share buckets: fine near both ends, where "almost all medical" vs "all medical" matters.
DOMAIN_SHARE_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class RequestDomainShare:
    """`mofe_request_domain_share{model,domain}`: one observation per domain per request
    summary (requests that opted in to per-request routing; mofe_serve.routing.opt_in)."""

    def __init__(self, model: str, registry: CollectorRegistry,
                 model_of_request: Callable[[], str | None] | None = None,
                 series: list[tuple[str, str]] = ()):
        # model_of_request: the current request's model on a server running several (a
        # family), else None and every observation carries `model`.
        self.model, self.registry = model, registry
        self.model_of_request = model_of_request or (lambda: None)
        self.histogram = Histogram(
            "mofe_request_domain_share", "Per request that asked for its routing summary: "
            "share of its routed slots (all layers, all top-k choices) that went to each "
            "domain's experts", ["model", "domain"], buckets=DOMAIN_SHARE_BUCKETS,
            registry=registry)
        # Every (model, domain) series exists from start-up, at zero, so dashboards, alerts
        # and scrapers see the histogram before the first request opts in.
        for labels in series:
            self.histogram.labels(*labels)

    def observe(self, summary: dict) -> None:
        model = self.model_of_request() or self.model
        for domain, share in summary["domains"].items():
            self.histogram.labels(model, domain).observe(share)

    def unregister(self) -> None:
        self.registry.unregister(self.histogram)
