"""Write mofe-routing.json, the Grafana dashboard for MoFE routing and vLLM serving.

The JSON is generated so panels stay consistent (datasource variable everywhere, one grid);
tests/deploy checks that the committed file equals this script's output. Run:
    python deploy/grafana/build_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("mofe-routing.json")
DS = {"type": "prometheus", "uid": "${datasource}"}  # never a hard-coded uid
MOFE = 'model=~"$model", namespace=~"$namespace"'
VLLM = 'namespace=~"$namespace"'  # vLLM's own label is model_name (the served name)
WINDOW = "$__rate_interval"
RATE = f"[{WINDOW}]"


def target(expr: str, legend: str = "", ref: str = "A", **extra) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def panel(kind: str, title: str, targets: list[dict], w: int, h: int, **extra) -> dict:
    return {"type": kind, "title": title, "datasource": DS, "targets": targets,
            "gridPos": {"w": w, "h": h}, **extra}


def quantiles(metric: str) -> list[dict]:
    return [target(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{VLLM}}}{RATE})))",
                   f"p{int(q * 100)}", ref) for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))]


def thresholds(steps: list[tuple[str, float | None]]) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def gauge(title: str, expr: str, steps: list[tuple[str, float | None]], unit: str) -> dict:
    return panel("gauge", title, [target(expr)], 5, 6, fieldConfig={"defaults": {
        "min": 0, "max": 1, "unit": unit, "thresholds": thresholds(steps)}, "overrides": []})


def stat(title: str, expr: str, steps: list[tuple[str, float | None]], unit: str, w: int) -> dict:
    return panel("stat", title, [target(expr)], w, 6, fieldConfig={"defaults": {
        "unit": unit, "thresholds": thresholds(steps)}, "overrides": []})


def series(title: str, targets: list[dict], unit: str, w: int = 12, stack: bool = False) -> dict:
    custom = {"stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    return panel("timeseries", title, targets, w, 8, fieldConfig={"defaults": {
        "unit": unit, "custom": custom}, "overrides": []})


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


# Every routing panel is built from rate()/increase() over the monotonic counters. The window
# gauges (mofe_routing_entropy, mofe_expert_share_*, mofe_experts_idle) restart on every
# POST /v1/routing/reset, which any API-key holder may send: nothing here reads them.
def expert_share(window: str, fn: str = "rate") -> str:
    """Each expert's share of its layer's routed slots over `window`, summed over pods.

    A layer without traffic gives 0/0 = NaN shares, which every comparison drops."""
    tokens = f"{fn}(mofe_expert_tokens_total{{{MOFE}}}[{window}])"
    return (f"sum by (model, layer, expert) ({tokens}) / on (model, layer) group_left "
            f"sum by (model, layer) ({tokens})")


def routing_entropy(window: str) -> str:
    """Entropy of the expert shares over `window`, normalized by ln(experts): 1 = uniform.

    Experts with share 0 add 0 (p ln p -> 0) and are dropped before ln()."""
    share = expert_share(window)
    return (f"-sum by (model, layer) (({share} > 0) * ln({share} > 0)) / on (model, layer) "
            f"ln(count by (model, layer) ({share}) > 1)")


def panels() -> list[dict]:
    tokens = f"rate(mofe_expert_tokens_total{{{MOFE}}}{RATE})"
    domain_range = f"increase(mofe_expert_tokens_total{{{MOFE}}}[$__range])"
    return [
        row("Routing balance"),
        gauge("Routing entropy (lowest layer, 1 = uniform)", f"min({routing_entropy(WINDOW)})",
              [("red", None), ("orange", 0.6), ("green", 0.8)], "percentunit"),
        gauge("Max expert share (hottest layer)", f"max({expert_share(WINDOW)})",
              [("green", None), ("orange", 0.5), ("red", 0.75)], "percentunit"),
        gauge("Min expert share (coldest layer)", f"min({expert_share(WINDOW)})",
              [("red", None), ("orange", 0.02), ("green", 0.05)], "percentunit"),
        # An expert that got no token over the range while its layer had traffic.
        stat("Idle experts (dashboard range, all layers)",
             f"count({expert_share('$__range', 'increase')} == 0) or vector(0)",
             [("green", None), ("red", 1)], "short", 5),
        # Seconds since the server last read the engine's routing counters (an idle server
        # reads them every 30 s): past a minute or two, the panels above show frozen data.
        stat("Routing data age (oldest pod)",
             f"max(mofe_routing_snapshot_age_seconds{{{MOFE}}})",
             [("green", None), ("orange", 60), ("red", 120)], "s", 4),
        row("Expert routing"),
        panel("heatmap", "Expert share per layer",
              [target(expert_share(WINDOW), "L{{layer}} E{{expert}}")],
              24, 10, options={"calculate": False, "yAxis": {"axisPlacement": "left"},
                               "color": {"mode": "scheme", "scheme": "Oranges", "min": 0},
                               "cellValues": {"unit": "percentunit"},
                               "tooltip": {"mode": "single", "yHistogram": False}}),
        series("Tokens per expert (routed slots/s)",
               [target(f"sum by (expert, domain) ({tokens})", "expert {{expert}} ({{domain}})")],
               "short", stack=True),
        series("Tokens per domain (routed slots/s)",
               [target(f"sum by (domain) ({tokens})", "{{domain}}")], "short", stack=True),
        panel("bargauge", "Domain share (dashboard range)", [target(
            f"sum by (domain) ({domain_range}) / scalar(sum({domain_range}))", "{{domain}}")], 8, 8,
            fieldConfig={"defaults": {"unit": "percentunit", "min": 0, "max": 1}, "overrides": []}),
        series("Gate weight per expert (/s)", [target(
            f"sum by (expert, domain) (rate(mofe_expert_gate_weight_total{{{MOFE}}}{RATE}))",
            "expert {{expert}} ({{domain}})")], "short", w=8),
        series("Routing entropy per layer", [target(routing_entropy(WINDOW), "layer {{layer}}")],
            "percentunit", w=8),
        # Over requests that asked for their routing summary (mofe_routing): how much of each
        # request went to each domain; p10/p50/p90 per domain.
        series("Per-request domain share (opted-in requests)", [
            target(f"histogram_quantile({q}, sum by (le, domain) "
                   f"(rate(mofe_request_domain_share_bucket{{{MOFE}}}{RATE})))",
                   f"{{{{domain}}}} p{int(q * 100)}", ref)
            for q, ref in ((0.1, "A"), (0.5, "B"), (0.9, "C"))], "percentunit", w=24),
        row("vLLM serving"),
        series("Throughput (tokens/s)", [
            target(f"sum(rate(vllm:generation_tokens_total{{{VLLM}}}{RATE}))", "generated", "A"),
            target(f"sum(rate(vllm:prompt_tokens_total{{{VLLM}}}{RATE}))", "prompt", "B")], "short"),
        series("Requests", [
            target(f"sum(vllm:num_requests_running{{{VLLM}}})", "running", "A"),
            target(f"sum(vllm:num_requests_waiting{{{VLLM}}})", "waiting", "B")], "short"),
        series("Time to first token", quantiles("vllm:time_to_first_token_seconds"), "s", w=8),
        series("Inter-token latency", quantiles("vllm:inter_token_latency_seconds"), "s", w=8),
        series("End-to-end request latency", quantiles("vllm:e2e_request_latency_seconds"), "s", w=8),
        series("KV cache usage", [target(f"avg(vllm:kv_cache_usage_perc{{{VLLM}}})", "used")],
               "percentunit", w=24),
    ]


def layout(items: list[dict]) -> list[dict]:
    """Place panels left to right on Grafana's 24-column grid; ids in order."""
    x = y = row_h = 0
    for i, item in enumerate(items, start=1):
        w, h = item["gridPos"]["w"], item["gridPos"]["h"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        item["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        item["id"] = i
        x, row_h = x + w, max(row_h, h)
    return items


def variable(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-query"}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {}, "options": [], "sort": 1, "hide": 0}


def dashboard() -> dict:
    return {
        "title": "MoFE routing and serving",
        "uid": "mofe-routing",
        "description": "Per-expert routing of MoFE models (mofe_* metrics) and vLLM serving.",
        "tags": ["mofe", "vllm"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            variable("namespace", "Namespace", "label_values(mofe_routed_tokens_total, namespace)"),
            variable("model", "Model",
                     'label_values(mofe_routed_tokens_total{namespace=~"$namespace"}, model)'),
        ]},
        "annotations": {"list": []},
        "panels": layout(panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
