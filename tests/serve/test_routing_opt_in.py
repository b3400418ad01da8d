"""The opt-in middleware on its own, in front of a real Starlette app: requests that do not
opt in reach the app byte for byte and their responses come back byte for byte (that is
"identical to a server without it"); opted-in ones get the body rewrite and the summary,
also when SSE events arrive split over several body messages.

The engine behind the summaries is a stand-in here (`collective_rpc` returning a fixed
summary); the real engine is covered by test_request_routing.py.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mofe_serve.engine import REQUEST_ROUTING_XARG, RoutingRpc
from mofe_serve.routing.opt_in import OptInError, RoutingOptIn, opt_in_body
from mofe_serve.routing.request_summary import SummaryFetcher

RAW = {"tokens": [[3, 1], [2, 2]], "gate_weight": [[2.5, 1.5], [2.0, 2.0]],
       "prompt_tokens": 1, "completion_tokens": 1}


class Engine:
    def __init__(self):
        self.calls = []

    async def collective_rpc(self, method, timeout=None, args=()):
        assert method == RoutingRpc.REQUESTS
        self.calls.append(list(args[0]))
        return [{key: RAW for key in args[0] if not key.startswith("lost")}]


def _app(seen: list, fetcher):
    async def completions(request: Request):
        body = await request.body()
        seen.append(body)
        if json.loads(body).get("stream"):
            # Events split across messages the way a proxy might cut them.
            parts = [b'data: {"id":"c1","object":"text_completion","created":5,"model":"m",',
                     b'"choices":[{"text":"hi"}]}\n\n']
            if b"include_usage" in body:
                parts += [b'data: {"id":"c1","choices":[],', b'"usage":{"prompt_tokens":1}}\n\n']
            parts.append(b"data: [DONE]\n\n")
            return StreamingResponse(iter(parts), media_type="text/event-stream")
        return Response(b'{"id":"c1", "choices":[{"text":"\xc3\xa9"}]}',
                        media_type="application/json")

    async def other(request: Request):
        return JSONResponse({"ok": True})

    routes = [Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", other)]
    middleware = [Middleware(RoutingOptIn, fetcher=lambda: fetcher)]
    return Starlette(routes=routes, middleware=middleware), Starlette(routes=routes)


def _post(app, body: bytes, headers=None) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/v1/completions", content=body, headers=headers or {})
    return asyncio.run(go())


@pytest.mark.parametrize("body", [
    b'{"model": "m", "prompt": "hello", "stream": false}',
    b'{"model":"m","prompt":"say \\"mofe\\" twice","stream":true}',  # mentions "mofe" only
    b'{"model": "m", "prompt": [1, 2,  3]}',
    b'not json at all "mofe"',
])
def test_requests_that_do_not_opt_in_pass_byte_for_byte(body):
    seen: list[bytes] = []
    engine = Engine()
    with_mw, without = _app(seen, SummaryFetcher(engine, ["a", "b"]))
    if body.startswith(b"not json"):
        with pytest.raises(json.JSONDecodeError):  # the app's own error, untouched
            _post(with_mw, body)
        assert seen == [body]
        return
    a, b = _post(with_mw, body), _post(without, body)
    assert seen == [body, body]
    assert a.content == b.content and a.headers == b.headers and a.status_code == b.status_code
    assert engine.calls == []


def test_opt_in_by_body_and_header_non_streaming():
    seen: list[bytes] = []
    engine = Engine()
    app, _ = _app(seen, SummaryFetcher(engine, ["med", "gen"]))
    r = _post(app, json.dumps({"model": "m", "prompt": "x", "vllm_xargs": {"a": 1},
                               **{"mofe": {"routing": True}}}).encode())
    sent = json.loads(seen[0])
    assert "mofe" not in sent and sent["vllm_xargs"]["a"] == 1
    key = sent["vllm_xargs"][REQUEST_ROUTING_XARG]
    assert engine.calls == [[key]]
    # vLLM's bytes kept, the summary appended; the content length follows.
    assert r.content.startswith(b'{"id":"c1", "choices":[{"text":"\xc3\xa9"}],"mofe_routing":')
    assert r.headers["content-length"] == str(len(r.content))
    summary = r.json()["mofe_routing"]
    assert summary["domains"] == {"med": 5 / 8, "gen": 3 / 8}
    assert summary["tokens"] == RAW["tokens"] and summary["completion_tokens"] == 1
    _post(app, b'{"model": "m", "prompt": "x"}', headers={"X-MoFE-Routing": "1"})
    assert REQUEST_ROUTING_XARG in json.loads(seen[1])["vllm_xargs"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_streaming_summary_in_the_final_chunk(include_usage):
    seen: list[bytes] = []
    app, _ = _app(seen, SummaryFetcher(Engine(), ["med", "gen"]))
    body = {"model": "m", "prompt": "x", "stream": True, "mofe": {"routing": True}}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r = _post(app, json.dumps(body).encode())
    events = [e for e in r.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert events[0] == b'data: {"id":"c1","object":"text_completion","created":5,"model":"m",' \
                        b'"choices":[{"text":"hi"}]}'
    final = json.loads(events[-2][len(b"data: "):])
    assert final["choices"] == [] and final["mofe_routing"]["tokens"] == RAW["tokens"]
    assert ("usage" in final) == include_usage
    if not include_usage:
        assert (final["id"], final["object"], final["created"], final["model"]) == (
            "c1", "text_completion", 5, "m")
    assert len(events) == 3


def test_malformed_opt_in_is_a_400_naming_the_field():
    with pytest.raises(OptInError, match='"mofe" must be an object'):
        opt_in_body(b'{"mofe": {"routing": 1}}', False, lambda: "k")
    with pytest.raises(OptInError):
        opt_in_body(b'{"mofe": {"route": true}}', False, lambda: "k")
    app, _ = _app([], SummaryFetcher(Engine(), ["a"]))
    r = _post(app, b'{"model": "m", "mofe": true}')
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "mofe" and r.json()["error"]["type"] == "BadRequestError"


def test_fetcher_coalesces_and_reports_untracked_and_failed_reads():
    engine = Engine()

    async def go():
        fetcher = SummaryFetcher(engine, ["a", "b"])
        fetcher.release("gone")
        results = await asyncio.gather(*(fetcher.summary(k) for k in ("k1", "k2", "lost1")))
        return results

    ok1, ok2, lost = asyncio.run(go())
    assert ok1["tokens"] == RAW["tokens"] and ok2 == ok1
    assert "error" in lost
    assert len(engine.calls) <= 2 and sorted(sum(engine.calls, [])) == ["gone", "k1", "k2",
                                                                         "lost1"]

    class Dead:
        async def collective_rpc(self, *a, **k):
            raise RuntimeError("engine dead")

    summary = asyncio.run(SummaryFetcher(Dead(), ["a"]).summary("k"))
    assert "engine dead" in summary["error"]


@pytest.mark.parametrize("stream", [False, True])
def test_access_log_line_carries_the_dominant_domain(stream, caplog):
    """--routing-access-log: uvicorn logs its access line from inside `send` at response
    start (`uvicorn.protocols.http.*_impl`); `Uvicornish` does the same around the app."""
    import logging

    from mofe_serve.routing import access_log

    access_log.install()
    seen: list[bytes] = []
    fetcher = SummaryFetcher(Engine(), ["med", "gen"])
    fetcher.access_log = True
    app, _ = _app(seen, fetcher)

    class Uvicornish:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def logging_send(message):
                if message["type"] == "http.response.start":
                    logging.getLogger("uvicorn.access").info(
                        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", scope["method"],
                        scope["path"], "1.1", message["status"])
                await send(message)
            await self.app(scope, receive, logging_send)

    body = {"model": "m", "prompt": "x", "stream": stream}
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        _post(Uvicornish(app), json.dumps({**body, "mofe": {"routing": True}}).encode())
        _post(Uvicornish(app), json.dumps(body).encode())
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert lines == ['127.0.0.1:1 - "POST /v1/completions HTTP/1.1" 200 mofe_domain=med:0.62',
                     '127.0.0.1:1 - "POST /v1/completions HTTP/1.1" 200']
