"""The app `mofe serve` builds (`mofe_serve.app.build_mofe_app`, the launcher's own
builder), in process and without an engine: middleware order, allow-list, error shapes.

No engine is needed for what is checked here: everything answers before a handler would
touch engine state. The same behaviour against the real server is in test_http_surface.py.
"""

from __future__ import annotations

import pydantic
import pytest
from starlette.testclient import TestClient

from mofe_serve.auth import OPEN_PATHS
from mofe_serve.errors import raised_while_validating

KEY = "unit-key"


def _app(*extra: str, metrics_require_key: bool = False, activity: list | None = None):
    from mofe_serve.app import build_mofe_app
    from mofe_serve.launcher import parse_vllm_args

    args = parse_vllm_args(["--model", "/models/none", *extra])
    args.mofe_metrics_require_key = metrics_require_key
    sink = activity if activity is not None else []
    return build_mofe_app(args, ("generate",), None, on_activity=lambda: sink.append(1))


@pytest.fixture(scope="module")
def keyed():
    activity: list = []
    app = _app("--api-key", KEY, activity=activity)
    return TestClient(app), activity


def test_refused_requests_never_reach_the_activity_hook(keyed):
    client, activity = keyed
    activity.clear()
    for path in ("/v1/completions", "/invocations", "/tokenize", "/no-such-route"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            assert client.post(path, headers=headers).status_code == 401
    assert activity == []
    # An accepted request does reach it (start and end): the hook is really installed.
    r = client.get("/no-such-route", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and len(activity) == 2


def test_middleware_order_puts_auth_before_activity(keyed):
    client, _ = keyed
    names = [m.cls.__name__ for m in client.app.user_middleware]
    assert names.index("ApiKeyMiddleware") < names.index("RequestActivity")
    assert names[-1] == "ValidationBoundary"  # innermost


def test_allow_list_is_exact_and_metrics_flag_closes_metrics(keyed):
    client, _ = keyed
    for path in ("/version", "/openapi.json", "/docs", "/redoc", "/metrics"):
        assert client.get(path).status_code == 200, path
    for path in ("/healthz", "/version/x", "/metrics/x", "/health/../v1/models", "/load"):
        assert client.get(path).status_code == 401, path
    closed = TestClient(_app("--api-key", KEY, metrics_require_key=True))
    assert closed.get("/metrics").status_code == 401
    assert closed.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert "/metrics" not in OPEN_PATHS


def test_without_a_key_nothing_is_guarded():
    client = TestClient(_app())
    assert _openai_error(client.get("/no-such-route"), 404)["code"] == 404
    assert [m.cls.__name__ for m in client.app.user_middleware][0] == "RequestActivity"


def _openai_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_not_found_and_wrong_method_are_openai_shaped(keyed):
    client, _ = keyed
    auth = {"Authorization": f"Bearer {KEY}"}
    assert _openai_error(client.get("/nope", headers=auth), 404)["code"] == 404
    r = client.get("/v1/completions", headers=auth)
    _openai_error(r, 405)
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("value", [5, 1.5, "json", [1]])
def test_validator_crash_is_a_400(keyed, path, value):
    client, _ = keyed
    body = {"model": "m", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}],
            "structured_outputs": value}
    r = client.post(path, json=body, headers={"Authorization": f"Bearer {KEY}"})
    error = _openai_error(r, 400)
    assert "Invalid request" in error["message"]


def test_only_exceptions_from_validation_are_client_errors():
    class Model(pydantic.BaseModel):
        @pydantic.model_validator(mode="before")
        @classmethod
        def crash(cls, data):
            return data.get("x")  # AttributeError on a non-dict, as vLLM's validators

    with pytest.raises(AttributeError) as during:
        pydantic.TypeAdapter(Model).validate_python(5)
    assert raised_while_validating(during.value)
    with pytest.raises(AttributeError) as outside:
        (5).get("x")
    assert not raised_while_validating(outside.value)


def test_metrics_require_key_needs_a_key(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mofe_cli.main import cli

    monkeypatch.delenv("MOFE_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["serve", str(tmp_path), "--metrics-require-key"])
    assert result.exit_code == 2 and "--metrics-require-key needs --api-key" in result.output
