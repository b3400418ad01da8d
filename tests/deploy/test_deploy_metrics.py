"""Every metric the manifests and the dashboard query exists, with the labels used.

Known names come from the real exporters: vLLM's metric definitions in the installed vLLM
source, and mofe_serve.metrics' collector fed real routing counts. PromQL is parsed with a
real PromQL parser. No alert, recording rule, autoscaler or panel may read a series whose value
moves when someone calls POST /v1/routing/reset: which series those are is found by resetting a
real RoutingState, not from a list.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import re
import time

import promql_parser as promql
import pytest
import yaml
from deploy_support import (
    DEPLOY,
    K8S,
    MOFE_METRICS,
    TARGET_LABELS,
    exposed_names,
    find,
    promql_expressions,
    vllm_metrics,
)

DASHBOARD = DEPLOY / "grafana" / "mofe-routing.json"
VLLM_LABELS = {"model_name", "engine", "le"}


# 2 layers, 4 experts, top-2: 10 tokens per layer -> 20 routed slots per layer.
WORKER_COUNTS = {"tokens": [[9, 6, 5, 0], [5, 5, 5, 5]],
                 "gate_weight": [[5.5, 2.5, 2.0, 0.0], [2.5, 2.5, 2.5, 2.5]]}
DOMAINS = ["medical", "medical", "general", "general"]


def scrape(state) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from /metrics text of the real collector."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from mofe_serve.metrics import RequestDomainShare, RoutingCollector

    registry = CollectorRegistry()
    registry.register(RoutingCollector("mofe-tiny@1", DOMAINS, state.snapshot))
    # One per-request summary observed, as the server does for each opted-in request.
    RequestDomainShare("mofe-tiny@1", registry).observe(
        {"domains": {"medical": 0.75, "general": 0.25}})
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def routing_state(reset_window: bool, taken_at: float):
    from mofe_serve.routing.state import RoutingState

    state = RoutingState(num_layers=2, num_experts=4, top_k=2)
    state.update(WORKER_COUNTS, taken_at=taken_at)
    if reset_window:
        state.reset_window(WORKER_COUNTS)  # what POST /v1/routing/reset does
        state.update(WORKER_COUNTS, taken_at=taken_at)  # same counts, read at the same time
    return state


@pytest.fixture(scope="session")
def mofe_series() -> dict[str, set[str]]:
    """Sample name -> label names, from /metrics text of the real routing collector."""
    series: dict[str, set[str]] = {}
    for name, labels in scrape(routing_state(False, time.time())):
        series.setdefault(name, set()).update(k for k, _ in labels)
    return series


@pytest.fixture(scope="session")
def reset_window_series() -> set[str]:
    """Sample names whose value changes when the routing window is reset, counts unchanged.

    Two servers that read the same cumulative counts at the same moment; one of them got a
    POST /v1/routing/reset. Whatever differs between their /metrics depends on the window."""
    taken_at = time.time() - 100  # an age of 100 s on both; clocks move little between scrapes
    plain, reset = (scrape(routing_state(r, taken_at)) for r in (False, True))
    assert plain.keys() == reset.keys()
    moved = {name for (name, labels), value in plain.items()
             if not math.isclose(value, reset[(name, labels)], rel_tol=1e-3, abs_tol=1e-9)}
    # The counters Prometheus rates over are monotonic: a reset must not move them.
    assert not moved & {"mofe_expert_tokens_total", "mofe_expert_gate_weight_total",
                        "mofe_routed_tokens_total"}, moved
    return moved


@pytest.fixture(scope="session")
def known(mofe_series, request) -> dict[str, set[str] | None]:
    """Queryable name -> its labels (None: labels not checked)."""
    vllm = vllm_metrics()
    assert vllm, "no vllm:* metric found in the installed vLLM's source (vllm/v1/metrics)"
    names: dict[str, set[str] | None] = {n: VLLM_LABELS for n in exposed_names(vllm)}
    names.update(mofe_series)
    return names


def test_collector_exports_the_contract(mofe_series):
    for name, (kind, labels) in MOFE_METRICS.items():
        if kind == "histogram":
            assert mofe_series.get(name + "_bucket") == labels | {"le"}, name
            assert mofe_series.get(name + "_count") == labels, name
            continue
        exposed = name + "_total" if kind == "counter" else name
        assert mofe_series.get(exposed) == labels, exposed


@pytest.fixture(scope="session")
def expressions(rendered) -> dict[str, str]:
    return promql_expressions(rendered)


def _selectors(expr) -> list:
    found = []
    promql.walk(expr, lambda node: found.append(node)
                if isinstance(node, promql.VectorSelector) else None)
    return found


def test_every_expression_parses_and_names_existing_series(expressions, known, rendered):
    records = {r["record"] for objs in rendered.values() for o in find(objs, "PrometheusRule")
               for g in o["spec"]["groups"] for r in g["rules"] if "record" in r}
    used: set[str] = set()
    for where, text in expressions.items():
        try:
            expr = promql.parse(text)
        except Exception as err:  # the parser raises a plain ValueError-like error
            pytest.fail(f"{where}: PromQL does not parse: {err}\n{text}")
        selectors = _selectors(expr)
        assert selectors, f"{where}: no metric in {text}"
        for sel in selectors:
            assert sel.name in known or sel.name in records, f"{where}: unknown metric {sel.name}"
            used.add(sel.name)
            labels = known.get(sel.name)
            for matcher in sel.matchers.matchers:
                if labels is not None:
                    assert matcher.name in labels | TARGET_LABELS, \
                        f"{where}: {sel.name} has no label {matcher.name}"
    # The dashboard and alerts cover every routing counter, the staleness gauge and vLLM's
    # key series (the window gauges are for people reading /metrics, see the next test).
    wanted = {n + "_total" for n, (k, _) in MOFE_METRICS.items() if k == "counter"}
    wanted.add("mofe_routing_snapshot_age_seconds")
    wanted |= {n + "_bucket" for n, (k, _) in MOFE_METRICS.items() if k == "histogram"}
    assert wanted <= used, f"never queried: {wanted - used}"
    assert {"vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
            "vllm:inter_token_latency_seconds_bucket", "vllm:num_requests_waiting"} <= used


def test_no_expression_reads_the_routing_reset_window(expressions, reset_window_series):
    """Alerts, recording rules, autoscalers and panels are built from rate()/increase() over
    the counters: any key holder can POST /v1/routing/reset, which must not silence an alert."""
    assert {"mofe_routing_entropy", "mofe_experts_idle"} <= reset_window_series  # sanity
    for where, text in expressions.items():
        names = {sel.name for sel in _selectors(promql.parse(text))}
        assert not names & reset_window_series, \
            f"{where} reads reset-window series {sorted(names & reset_window_series)}:\n{text}"


def test_stale_routing_data_alerts(rendered):
    """An alert fires on routing data that stopped updating (engine dead or stuck)."""
    from mofe_serve.routing.poller import RoutingPoller

    defaults = {name: param.default for name, param
                in inspect.signature(RoutingPoller.__init__).parameters.items()}
    for name in ("gpu", "gpu-hpa"):  # the overlays that include components/alerts
        rules = {r["alert"]: r for o in find(rendered[name], "PrometheusRule")
                 for g in o["spec"]["groups"] for r in g["rules"] if "alert" in r}
        stale = rules["MofeRoutingDataStale"]
        expr = promql.parse(stale["expr"])
        assert isinstance(expr, promql.BinaryExpr) and str(expr.op) == ">"
        assert [s.name for s in _selectors(expr)] == ["mofe_routing_snapshot_age_seconds"]
        # A healthy idle server reads every idle_poll_s, and one read may take up to the RPC
        # timeout: only an age beyond both means the engine stopped answering.
        assert float(expr.rhs.val) > defaults["idle_poll_s"] + defaults["rpc_timeout_s"]


def test_rates_only_over_counters_and_aggregations_keep_real_labels(expressions, known):
    counters = {n for n in known if n.endswith(("_total", "_bucket", "_sum", "_count"))}
    for where, text in expressions.items():
        expr = promql.parse(text)

        def check(node, where=where):
            if isinstance(node, promql.Call) and node.func.name in ("rate", "increase", "irate"):
                for sel in _selectors(node):
                    assert sel.name in counters, f"{where}: {node.func.name}() over gauge {sel.name}"
            if isinstance(node, promql.AggregateExpr) and node.modifier is not None:
                available = set(TARGET_LABELS)
                for sel in _selectors(node.expr):
                    available |= known.get(sel.name) or {"model", "layer", "expert", "domain"}
                missing = set(node.modifier.labels) - available
                assert not missing, f"{where}: aggregation by missing labels {missing}"
        promql.walk(expr, check)


def test_hpa_metric_is_vllm_queue_through_the_adapter_rule(rendered, known):
    adapter = yaml.safe_load((K8S / "components" / "autoscaling-hpa" /
                              "prometheus-adapter-rules.yaml").read_text())
    exposed = set()
    for rule in adapter["rules"]["custom"]:
        series = promql.parse(rule["seriesQuery"]).name
        assert series in known
        pattern, template = rule["name"]["matches"], rule["name"]["as"]
        exposed.add(re.sub(pattern, template.replace("${1}", r"\1"), series))
    hpa = find(rendered["gpu-hpa"], "HorizontalPodAutoscaler")[0]
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in exposed
    keda = find(rendered["gpu"], "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["query"]
    # KEDA and the HPA scale on the same vLLM series, scoped to the overlay's Service: the
    # ServiceMonitor's scrape labels each series with its Service name and namespace.
    selectors = _selectors(promql.parse(keda))
    assert [s.name for s in selectors] == ["vllm:num_requests_waiting"]
    matchers = {m.name: m.value for m in selectors[0].matchers.matchers}
    assert matchers["service"] == find(rendered["gpu"], "Service")[0]["metadata"]["name"]
    assert matchers["namespace"] == find(rendered["gpu"], "Namespace")[0]["metadata"]["name"]


def test_dashboard_uses_only_the_datasource_variable():
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uids = re.findall(r'"uid":\s*"([^"]*)"', text)
    assert set(uids) == {"${datasource}", dashboard["uid"]}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    kinds = {p["type"] for p in dashboard["panels"]}
    assert {"heatmap", "gauge", "timeseries"} <= kinds


def test_dashboard_layout_has_unique_ids_and_no_overlap():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"panel {p['title']!r} overlaps another"
        cells |= area


def test_dashboard_file_is_the_generator_output():
    spec = importlib.util.spec_from_file_location("build_dashboard",
                                                  DEPLOY / "grafana" / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), \
        "run: python deploy/grafana/build_dashboard.py"
