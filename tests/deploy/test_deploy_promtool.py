"""Alerts, recording rules and dashboard PromQL evaluated by Prometheus' own `promtool`.

The shipped PrometheusRule (rendered by kustomize) and the dashboard's queries run on series
shaped like our /metrics: routing entropy computed from counter rates must equal what
mofe_serve.metrics computes from the same counts, and the alerts must fire (and only) when
they should. promtool is not on PyPI: it comes with Debian's `prometheus` package
(`apt-get install prometheus`, or `apt-get download prometheus` and unpack promtool with
`dpkg-deb -x`); without it this module is skipped and the static checks in
test_deploy_metrics.py still run.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import DEPLOY, GRAFANA_VARS, find

from mofe_serve.metrics import window_stats

# `make setup` unpacks promtool into the venv where apt-get can fetch Debian's package.
PROMTOOL = (shutil.which("promtool", path=str(Path(sys.executable).parent))
            or shutil.which("promtool"))
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian: prometheus) not found")

MODEL = "mofe-tiny@1"
DOMAINS = ["medical", "medical", "general", "general"]
# Routed slots per minute for each expert: a skewed layer, and one with two idle experts.
PER_MINUTE = {"0": [170, 10, 10, 10], "1": [50, 50, 0, 0]}
MINUTES = 120


def counter_series(per_minute: dict[str, list[int]]) -> list[dict]:
    """mofe_expert_tokens_total and mofe_routed_tokens_total (top-2) growing linearly."""
    out = []
    for layer, rates in per_minute.items():
        for expert, rate in enumerate(rates):
            labels = (f'model="{MODEL}",layer="{layer}",expert="{expert}",'
                      f'domain="{DOMAINS[expert]}",namespace="mofe",pod="mofe-serve-0"')
            out.append({"series": f"mofe_expert_tokens_total{{{labels}}}",
                        "values": f"0+{rate}x{MINUTES}"})
        out.append({"series": f'mofe_routed_tokens_total{{model="{MODEL}",layer="{layer}",'
                              f'namespace="mofe",pod="mofe-serve-0"}}',
                    "values": f"0+{sum(rates) // 2}x{MINUTES}"})
    return out


@pytest.fixture(scope="module")
def rules_file(rendered, tmp_path_factory):
    """The gpu overlay's PrometheusRule as a plain rules file (annotations are templates for
    people; promtool would compare them verbatim, so they are left out)."""
    # A copy: `rendered` is shared by the whole session.
    groups = [{**g, "rules": [{k: v for k, v in rule.items() if k != "annotations"}
                              for rule in g["rules"]]}
              for o in find(rendered["gpu"], "PrometheusRule") for g in o["spec"]["groups"]]
    path = tmp_path_factory.mktemp("promtool") / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def run_promtool(rules_file, tests: list[dict]) -> None:
    spec = rules_file.with_name("test.yaml")
    spec.write_text(yaml.safe_dump({"rule_files": [rules_file.name],
                                    "evaluation_interval": "30s", "tests": tests}))
    proc = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def entropy(layer: str) -> float:
    return window_stats(PER_MINUTE[layer])["entropy"]


# promtool compares sample values exactly: both sides are rounded the way PromQL's round() does.
def rounded(expr: str) -> str:
    return f"round({expr}, 0.0001)"


def near(value: float) -> float:
    return math.floor(value * 10000 + 0.5) / 10000


def test_entropy_from_counter_rates_matches_the_collector(rules_file):
    assert round(entropy("0"), 3) == 0.424 and round(entropy("1"), 3) == 0.5
    samples = [{"labels": f'{{model="{MODEL}",layer="{layer}"}}', "value": near(entropy(layer))}
               for layer in PER_MINUTE]
    run_promtool(rules_file, [{
        "interval": "1m", "input_series": counter_series(PER_MINUTE),
        "promql_expr_test": [{"expr": rounded("mofe:routing_entropy:rate30m"),
                              "eval_time": "60m", "exp_samples": samples}]}])


def test_imbalance_fires_on_a_skewed_layer_only(rules_file):
    # Both layers sit below 0.6 here; a uniform third layer must stay quiet.
    per_minute = {**PER_MINUTE, "2": [40, 40, 40, 40]}
    firing = [{"exp_labels": {"severity": "warning", "model": MODEL, "layer": layer}}
              for layer in ("0", "1")]
    run_promtool(rules_file, [{
        "interval": "1m", "input_series": counter_series(per_minute),
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "MofeRoutingImbalance", "exp_alerts": []},
            {"eval_time": "90m", "alertname": "MofeRoutingImbalance", "exp_alerts": firing}]}])


def test_stale_routing_data_fires_when_the_snapshot_stops_updating(rules_file):
    pod = {"model": MODEL, "namespace": "mofe", "pod": "mofe-serve-0"}
    labels = ",".join(f'{k}="{v}"' for k, v in pod.items())
    run_promtool(rules_file, [{
        "interval": "1m",
        "input_series": [{
            # Idle heartbeat ages (0-30 s) for 20 min, then the engine stops answering.
            "series": f"mofe_routing_snapshot_age_seconds{{{labels}}}",
            "values": "15 30 " * 10 + "0+60x20"}],
        "alert_rule_test": [
            {"eval_time": "19m", "alertname": "MofeRoutingDataStale", "exp_alerts": []},
            {"eval_time": "35m", "alertname": "MofeRoutingDataStale",
             "exp_alerts": [{"exp_labels": {"severity": "critical", **pod}}]}]}])


def dashboard_expr(title: str) -> str:
    panels = json.loads((DEPLOY / "grafana" / "mofe-routing.json").read_text())["panels"]
    expr = next(p for p in panels if p["title"] == title)["targets"][0]["expr"]
    for var, value in {**GRAFANA_VARS, "$model": ".*", "$namespace": ".*"}.items():
        expr = expr.replace(var, value)
    return rounded(expr)


def test_dashboard_balance_panels_from_counters(rules_file):
    shares = {layer: [r / sum(rates) for r in rates] for layer, rates in PER_MINUTE.items()}
    run_promtool(rules_file, [{
        "interval": "1m", "input_series": counter_series(PER_MINUTE),
        "promql_expr_test": [
            {"expr": dashboard_expr("Routing entropy (lowest layer, 1 = uniform)"),
             "eval_time": "60m", "exp_samples": [{"labels": "{}", "value": near(entropy("0"))}]},
            {"expr": dashboard_expr("Max expert share (hottest layer)"), "eval_time": "60m",
             "exp_samples": [{"labels": "{}", "value": near(max(map(max, shares.values())))}]},
            {"expr": dashboard_expr("Min expert share (coldest layer)"), "eval_time": "60m",
             "exp_samples": [{"labels": "{}", "value": 0}]},
            # Layer 1's experts 2 and 3 got nothing over the range while the layer had traffic.
            {"expr": dashboard_expr("Idle experts (dashboard range, all layers)"),
             "eval_time": "90m", "exp_samples": [{"labels": "{}", "value": 2}]},
        ]}])


def test_dashboard_request_domain_share_panel(rules_file):
    """The per-request domain-share panel over the histogram the server exports
    (mofe_serve.metrics.RequestDomainShare): 10 opted-in requests a minute, each 75%
    medical, put the medical p10 in the (0.7, 0.8] bucket at 0.71."""
    from mofe_serve.metrics import DOMAIN_SHARE_BUCKETS

    pod = f'model="{MODEL}",domain="medical",namespace="mofe",pod="mofe-serve-0"'
    series = [{"series": f'mofe_request_domain_share_bucket{{{pod},le="{le}"}}',
               "values": f"0+{10 if le >= 0.75 else 0}x{MINUTES}"}
              for le in DOMAIN_SHARE_BUCKETS]
    series.append({"series": f'mofe_request_domain_share_bucket{{{pod},le="+Inf"}}',
                   "values": f"0+10x{MINUTES}"})
    run_promtool(rules_file, [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{
            "expr": dashboard_expr("Per-request domain share (opted-in requests)"),
            "eval_time": "60m", "exp_samples": [{"labels": '{domain="medical"}',
                                                 "value": 0.71}]}]}])
