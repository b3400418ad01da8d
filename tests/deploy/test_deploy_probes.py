"""Probes and ports against the real app `mofe serve` builds, and its API-key middleware."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from deploy_support import DEPLOY, SERVE_ROUTES, one, pod_spec

SERVER_OVERLAYS = ("cpu-dev", "gpu", "gpu-hpa")
API_KEY = "deploy-test-key"


def _server(objs: list[dict]) -> dict:
    return pod_spec(one(objs, "Deployment", "mofe-serve"))["containers"][0]


@pytest.fixture(scope="session")
def serve_app():
    """The FastAPI app `mofe serve` builds (vLLM's build_app plus our routes and auth
    middleware), with engine-backed state filled in so /health and /v1/models answer."""
    from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList

    from mofe_serve import launcher
    from mofe_serve.app import build_mofe_app

    args = launcher.parse_vllm_args(["--model", "/models/registry/x", "--api-key", API_KEY])
    app = build_mofe_app(args, ("generate",), None, on_activity=lambda: None)

    class Models:  # what OpenAIServingModels.show_available_models returns once loaded
        cards = [ModelCard(id="mofe-tiny@1", root="/models/registry/x")]

        async def show_available_models(self):
            return ModelList(data=list(self.cards))

    app.state.engine_client = None  # vLLM's /health: no engine client -> 200
    app.state.openai_serving_models = Models()
    return app


@pytest.fixture(scope="session")
def live_app(serve_app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # lifespan off: vLLM's lifespan starts engine stat logging, which needs a real engine.
    server = uvicorn.Server(uvicorn.Config(serve_app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(timeout=10)


def _route_paths(app) -> set[str]:
    return {route.path for route in app.routes if getattr(route, "path", None)}


def _probe_paths(objs: list[dict]) -> list[str]:
    server = _server(objs)
    paths = [server[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe")]
    script = server["readinessProbe"]["exec"]["command"][-1]
    paths += re.findall(r"http://127\.0\.0\.1:\d+(/[\w/]*)", script)
    return paths


def test_probe_and_scrape_paths_are_serve_routes(rendered, serve_app):
    # Routes of the app `mofe serve` really builds; the deploy files rely on SERVE_ROUTES.
    routes = _route_paths(serve_app)
    assert SERVE_ROUTES <= routes, f"mofe serve lacks {SERVE_ROUTES - routes}"
    for name in SERVER_OVERLAYS:
        paths = _probe_paths(rendered[name])
        assert "/v1/models" in paths and "/health" in paths
        for path in paths:
            assert path in routes, f"{name}: probe path {path} is not a route of mofe serve"
    monitors = [o for objs in rendered.values() for o in objs if o["kind"] == "ServiceMonitor"]
    assert monitors
    for monitor in monitors:
        assert all(ep["path"] in routes for ep in monitor["spec"]["endpoints"])
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        health = re.findall(r"127\.0\.0\.1:8000(/[\w/]*)",
                            (DEPLOY / "docker" / dockerfile).read_text())
        assert health and set(health) <= routes


def test_ports_match_between_container_service_and_monitor(rendered):
    for name in ("gpu", "gpu-hpa"):
        objs = rendered[name]
        server = _server(objs)
        ports = {p["name"]: p["containerPort"] for p in server["ports"]}
        service = one(objs, "Service", "mofe-serve")
        monitor = one(objs, "ServiceMonitor", "mofe-serve")
        service_ports = {p["name"]: p for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports, "monitor port name not on the Service"
            target = service_ports[endpoint["port"]]["targetPort"]
            assert target in ports or target in ports.values()
        labels = one(objs, "Deployment", "mofe-serve")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        monitor_selector = monitor["spec"]["selector"]["matchLabels"]
        assert monitor_selector.items() <= service["metadata"]["labels"].items()
        for probe in ("startupProbe", "livenessProbe"):
            assert server[probe]["httpGet"]["port"] in ports
        # The serve --port argument, the exec probe's URL and the container port agree.
        args = server["args"]
        assert int(args[args.index("--port") + 1]) == ports["http"] == 8000
        assert ":8000/" in server["readinessProbe"]["exec"]["command"][-1]


def test_health_and_metrics_answer_without_the_api_key(live_app):
    import httpx

    base, _ = live_app
    assert httpx.get(base + "/health").status_code == 200
    assert httpx.get(base + "/metrics").status_code == 200
    # Why readiness is an exec probe: an httpGet probe cannot send the key.
    assert httpx.get(base + "/v1/models").status_code == 401


def _run_readiness(objs: list[dict], port: int, env: dict[str, str]) -> int:
    command = _server(objs)["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    script = command[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=30, check=False)
    return proc.returncode


def test_readiness_exec_probe_uses_the_key_from_the_environment(rendered, live_app, serve_app):
    _, port = live_app
    objs = rendered["gpu"]
    assert _run_readiness(objs, port, {"MOFE_API_KEY": API_KEY}) == 0
    assert _run_readiness(objs, port, {"MOFE_API_KEY": "wrong"}) != 0
    assert _run_readiness(objs, port, {}) != 0
    models = serve_app.state.openai_serving_models
    saved, models.cards = models.cards, []
    try:  # no model listed yet: not ready
        assert _run_readiness(objs, port, {"MOFE_API_KEY": API_KEY}) != 0
    finally:
        models.cards = saved
