"""The HTTP surface of the real `mofe serve`: API key on every route, OpenAI error shapes,
`GET /v1/models/{model}`, echo-only completions, validation errors never 5xx.

The route walk takes the routes from the running server itself: vLLM's `serve_http` logs
every route of the app it serves ("Route: PATH, Methods: ...", read from `app.routes`)
just before it starts; the walk cross-checks that list against the server's /openapi.json.
A route a later vLLM adds is then walked (and must need the key) without editing the test.
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from session_server import ALIAS, API_KEY, SERVED_NAME

from mofe_serve.auth import OPEN_PATHS

pytestmark = [pytest.mark.engine, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {API_KEY}"}
_ROUTE_LINE = re.compile(r"Route: (\S+), Methods: ([A-Z, ]+)$")


def _served_routes(server) -> set[tuple[str, str]]:
    routes = set()
    for line in server.log.read_text(errors="replace").splitlines():
        if m := _ROUTE_LINE.search(line):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", m.group(1))  # {model:path}: as OpenAPI
            routes |= {(method.strip(), path) for method in m.group(2).split(",")}
    return routes


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)  # /v1/responses/{response_id} -> .../x


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, r.text
    assert isinstance(error["message"], str) and error["message"] and error["type"]
    return error


def test_every_route_of_the_app_needs_the_key(mofe_server):
    routes = _served_routes(mofe_server)
    paths = {path for _, path in routes}
    # The log list is the app's: it holds everything the schema documents, and more.
    schema = httpx.get(f"{mofe_server.base_url}/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method in operations:
            assert (method.upper(), path) in routes, (method, path)
    assert {"/v1/completions", "/invocations", "/v1/routing", "/v1/models/{model}",
            "/v1/chat/completions/render", "/inference/v1/generate"} <= paths
    assert len(routes) > 40

    guarded = sorted((m, p) for m, p in routes if p not in OPEN_PATHS | {"/metrics"}
                     and m != "HEAD")
    for method, path in guarded:
        url = mofe_server.base_url + _concrete(path)
        for headers in ({}, {"Authorization": "Bearer wrong-key"},
                        {"Authorization": f"Basic {API_KEY}"}):
            # No body: even an unguarded route would not act on it.
            r = httpx.request(method, url, headers=headers, timeout=60)
            error = assert_openai_error(r, 401)
            assert error["code"] == "invalid_api_key"
    # Deny by default: a path no route serves is refused before routing, too.
    assert_openai_error(httpx.post(mofe_server.base_url + "/no-such-route"), 401)
    for path in sorted(OPEN_PATHS | {"/metrics"}):
        r = httpx.get(mofe_server.base_url + path, timeout=60)
        assert r.status_code == 200, (path, r.status_code)


def test_models_retrieve_every_served_name(openai_client):
    for name in (SERVED_NAME, ALIAS):
        model = openai_client.models.retrieve(name)
        assert model.id == name and model.object == "model"
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.models.retrieve("no-such-model@9")
    assert err.value.status_code == 404
    assert "no-such-model@9" in assert_openai_error(err.value.response, 404)["message"]


def test_unknown_route_and_wrong_method_are_openai_shaped(mofe_server):
    base = mofe_server.base_url
    assert_openai_error(httpx.get(base + "/v1/no-such-route", headers=AUTH), 404)
    r = httpx.get(base + "/v1/completions", headers=AUTH)
    assert_openai_error(r, 405)
    assert r.headers["allow"] == "POST"
    assert_openai_error(httpx.delete(base + "/v1/routing", headers=AUTH), 405)
    # Validation errors, too.
    assert_openai_error(httpx.post(base + "/v1/completions", headers=AUTH,
                                   json={"model": SERVED_NAME}), 400)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/invocations"])
def test_structured_outputs_not_an_object_is_400(mofe_server, path):
    """vLLM's check_structured_outputs_count raised AttributeError: a 500 on vLLM 0.32."""
    for value in (5, "json", [1]):
        body = {"model": SERVED_NAME, "max_tokens": 1, "structured_outputs": value}
        body |= ({"prompt": "hi"} if "chat" not in path
                 else {"messages": [{"role": "user", "content": "hi"}]})
        r = httpx.post(mofe_server.base_url + path, json=body, headers=AUTH, timeout=60)
        assert assert_openai_error(r, 400)["code"] == 400


def test_echo_with_max_tokens_0_generates_and_counts_nothing(openai_client):
    prompt = "The heart pumps"
    for logprobs in (None, 1):
        r = openai_client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=0,
                                             echo=True, logprobs=logprobs)
        assert r.choices[0].text == prompt
        assert r.usage.completion_tokens == 0
        assert r.usage.total_tokens == r.usage.prompt_tokens > 0
        if logprobs:  # one entry per prompt token, none for a generated token
            assert len(r.choices[0].logprobs.tokens) == r.usage.prompt_tokens
    stream = openai_client.completions.create(
        model=SERVED_NAME, prompt=prompt, max_tokens=0, echo=True, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == prompt
    assert all(c.usage.completion_tokens == 0 for c in chunks)
    # Unchanged where something is generated.
    r = openai_client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=2,
                                         echo=True, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 2 and r.choices[0].text.startswith(prompt)


def test_metrics_export_routing_snapshot_age(mofe_server):
    from .routing_client import scrape

    ages = scrape(mofe_server)["mofe_routing_snapshot_age_seconds"]
    assert [s.labels for s in ages] == [{"model": SERVED_NAME}]
    assert ages[0].value >= 0
