"""Every metric the manifests and the dashboard query exists, with the labels used.

Known names come from the real exporters: vLLM's metric definitions in the installed vLLM
source, and mofe_serve.metrics' collector fed real routing counts (the issue's contract list
when mofe_serve is not importable). PromQL is parsed with a real PromQL parser.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
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

promql = pytest.importorskip("promql_parser", reason="promql-parser not installed")
yaml = pytest.importorskip("yaml")

DASHBOARD = DEPLOY / "grafana" / "mofe-routing.json"
VLLM_LABELS = {"model_name", "engine", "le"}


@pytest.fixture(scope="session")
def mofe_series() -> dict[str, set[str]]:
    """Sample name -> label names, from /metrics text of the real routing collector."""
    if importlib.util.find_spec("mofe_serve") is None:
        pytest.skip("mofe_serve not importable")
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from mofe_serve.metrics import RoutingCollector
    from mofe_serve.routing.state import RoutingState

    # 2 layers, 4 experts, top-2: 10 tokens per layer -> 20 routed slots per layer.
    state = RoutingState(num_layers=2, num_experts=4, top_k=2)
    state.update({"tokens": [[9, 6, 5, 0], [5, 5, 5, 5]],
                  "gate_weight": [[5.5, 2.5, 2.0, 0.0], [2.5, 2.5, 2.5, 2.5]]})
    registry = CollectorRegistry()
    registry.register(RoutingCollector("mofe-tiny@1", ["medical", "medical", "general",
                                                       "general"], state.snapshot))
    text = generate_latest(registry).decode()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.fixture(scope="session")
def known(mofe_series, request) -> dict[str, set[str] | None]:
    """Queryable name -> its labels (None: labels not checked)."""
    vllm = vllm_metrics()
    if not vllm:
        pytest.skip("vLLM is not installed: its metric names are unknown")
    names: dict[str, set[str] | None] = {n: VLLM_LABELS for n in exposed_names(vllm)}
    names.update(mofe_series)
    return names


def test_collector_exports_the_contract(mofe_series):
    for name, (kind, labels) in MOFE_METRICS.items():
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
    # The dashboard and alerts cover the whole routing contract and vLLM's key series.
    contract = {n + "_total" if k == "counter" else n for n, (k, _) in MOFE_METRICS.items()}
    assert contract <= used, f"never queried: {contract - used}"
    assert {"vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
            "vllm:inter_token_latency_seconds_bucket", "vllm:num_requests_waiting"} <= used


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
