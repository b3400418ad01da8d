"""Reliability against the real server: load, client disconnects, malformed requests, auth.

Bounded in count and time, loopback only. Shares the session's `mofe serve` (tiny Mixtral,
4 experts, top-2, prefix caching off).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_server import API_KEY, SERVED_NAME

from training.test_models import TOP_K

from .routing_client import get_routing, reset_routing, routing_after, scrape

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _requests_in_engine(server) -> float:
    families = scrape(server)
    return sum(s.value for name in ("vllm:num_requests_running", "vllm:num_requests_waiting")
               for s in families.get(name, []))


def _wait_idle(server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _requests_in_engine(server) > 0:
        assert time.monotonic() < deadline, "requests still running in the engine"
        time.sleep(0.5)


def test_load_200_requests_at_concurrency_32(mofe_server):
    """Zero errors, and afterwards every layer's count is still top_k x forwarded tokens."""
    _wait_idle(mofe_server)
    reset_routing(mofe_server)
    client = openai.AsyncOpenAI(base_url=f"{mofe_server.base_url}/v1", api_key=API_KEY,
                                max_retries=0, timeout=300)
    sem = asyncio.Semaphore(32)

    async def one(i: int):
        async with sem:
            if i % 3 == 0:
                r = await client.chat.completions.create(
                    model=SERVED_NAME, max_tokens=4 + i % 5, extra_body={"ignore_eos": True},
                    messages=[{"role": "user", "content": f"Question {i}: what does the liver do?"}])
            else:
                r = await client.completions.create(
                    model=SERVED_NAME, prompt=f"Case {i}: the patient was given", max_tokens=
                    4 + i % 5, extra_body={"ignore_eos": True})
            return r.usage.prompt_tokens + r.usage.completion_tokens - 1

    async def run():
        try:
            return await asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    forwarded = sum(results)
    data = routing_after(mofe_server, time.time())
    for layer, counts in enumerate(data["tokens"]):
        assert sum(counts) == TOP_K * forwarded, f"layer {layer}"


def test_client_disconnects_mid_stream(mofe_server, openai_client):
    """20 streams dropped after their first chunk: no request stays in the engine."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": SERVED_NAME, "prompt": "The kidney filters", "max_tokens": 200,
            "stream": True, "ignore_eos": True}

    async def drop_one(client: httpx.AsyncClient):
        async with client.stream("POST", "/v1/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            async for _ in r.aiter_lines():
                break  # close the connection after the first chunk

    async def run():
        async with httpx.AsyncClient(base_url=mofe_server.base_url, timeout=60) as client:
            await asyncio.gather(*(drop_one(client) for _ in range(20)))

    asyncio.run(run())
    _wait_idle(mofe_server, timeout=60)
    assert httpx.get(f"{mofe_server.base_url}/health").status_code == 200
    r = openai_client.completions.create(model=SERVED_NAME, prompt="Still", max_tokens=2)
    assert r.choices[0].finish_reason in ("length", "stop")


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
_json = st.recursive(_json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)
_fields = {
    "model": st.one_of(st.just(SERVED_NAME), st.text(max_size=12), _json_scalar),
    "prompt": st.one_of(st.text(max_size=30), st.lists(st.integers(-5, 5000), max_size=6),
                        _json),
    "messages": st.one_of(_json, st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "tool", "bogus", ""]),
         "content": st.one_of(st.text(max_size=20), _json_scalar)}), max_size=3)),
    "max_tokens": st.one_of(st.integers(-3, 6), _json_scalar),
    "temperature": st.one_of(st.floats(-2, 3), _json_scalar),
    "top_p": st.one_of(st.floats(-1, 2), _json_scalar),
    "n": st.one_of(st.integers(-1, 3), _json_scalar),
    "logprobs": st.one_of(st.integers(-2, 30), st.booleans(), _json_scalar),
    "stop": st.one_of(st.text(max_size=5), st.lists(_json_scalar, max_size=3)),
    "seed": st.one_of(st.integers(-2**70, 2**70), _json_scalar),
    "stream": st.booleans(),
}
_bodies = st.fixed_dictionaries({}, optional=_fields)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), body=_bodies)
def test_malformed_requests_get_4xx_never_5xx(mofe_server, path, body):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(mofe_server.base_url + path, json=body, headers=headers, timeout=120)
    assert r.status_code < 500, (path, body, r.status_code, r.text[:300])
    if r.status_code >= 400:  # OpenAI's error shape, whatever failed
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text[:300]


def test_server_healthy_after_malformed_requests(mofe_server):
    garbage = [b"{", b"[]", b"null", b'{"model": 1}', b"\xff\xfe"]
    for raw in garbage:
        r = httpx.post(f"{mofe_server.base_url}/v1/completions", content=raw,
                       headers={"Authorization": f"Bearer {API_KEY}",
                                "Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    assert httpx.get(f"{mofe_server.base_url}/health").status_code == 200


def test_api_key_guards_completions_and_routing_reset(mofe_server):
    base = mofe_server.base_url
    body = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        assert httpx.post(f"{base}/v1/completions", json=body, headers=headers).status_code == 401
        assert httpx.post(f"{base}/v1/routing/reset", headers=headers).status_code == 401
    before = get_routing(mofe_server)["since"]
    assert httpx.post(f"{base}/v1/routing/reset").status_code == 401
    assert get_routing(mofe_server)["since"] == before  # the refused reset changed nothing
