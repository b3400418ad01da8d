"""Per-request routing opt-in on `/v1/chat/completions` and `/v1/completions`.

A request opts in with `"mofe": {"routing": true}` in its JSON body (the openai client's
`extra_body`) or the header `X-MoFE-Routing: 1`. This pure ASGI middleware then
- rewrites the body for vLLM: drops `mofe` and adds `vllm_xargs.mofe_routing = KEY` (a
  fresh key), which vLLM copies into `SamplingParams.extra_args`, where the worker reads it
  (step_routing.py);
- after the response is complete, pops the request's summary from the worker
  (`SummaryFetcher`, about one engine step) and adds it as `mofe_routing`:
  non-streaming: a top-level field of the JSON body; streaming: a field of the final usage
  chunk when `stream_options.include_usage` is set, otherwise one extra final chunk
  (`choices: []`, like the usage chunk) just before `data: [DONE]`.

Everything else passes through untouched: a request that does not opt in is handed the very
bytes it sent and its response bytes are not looked at, so it is byte-identical to a server
without this middleware. The only work for such a request is a substring test on its body
(`b'"mofe"'`); the JSON is parsed only when that matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..errors import error_response
from . import access_log

PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
HEADER = b"x-mofe-routing"
_TRUE = {b"1", b"true", b"yes", b"on"}
_DONE = b"data: [DONE]"
_COMPACT = (",", ":")


class OptInError(ValueError):
    pass


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=_COMPACT, ensure_ascii=False).encode()


def _with_field(obj_bytes: bytes, name: str, value) -> bytes:
    """`{...}` with `"name": value` appended, the existing bytes left as they are."""
    body = obj_bytes.rstrip()
    if not body.endswith(b"}"):
        raise ValueError("not a JSON object")
    sep = b"" if body[:-1].rstrip().endswith(b"{") else b","
    return body[:-1] + sep + _dumps(name) + b":" + _dumps(value) + b"}"


def opt_in_body(body: bytes, header_on: bool, key_fn: Callable[[], str]
                ) -> tuple[bytes, str | None, dict | None]:
    """(body for vLLM, routing key or None, parsed request or None). Raises OptInError for a
    malformed `mofe` field. A body not mentioning `"mofe"` is returned as is unless the
    header opted in."""
    if not header_on and b'"mofe"' not in body:
        return body, None, None
    try:
        request = json.loads(body)
    except ValueError:
        return body, None, None  # vLLM answers the malformed JSON itself
    if not isinstance(request, dict):
        return body, None, None
    wanted = header_on
    if "mofe" in request:
        mofe = request.pop("mofe")
        if not isinstance(mofe, dict) or set(mofe) - {"routing"} or not isinstance(
                mofe.get("routing", False), bool):
            raise OptInError('"mofe" must be an object {"routing": true|false}, got '
                             f"{json.dumps(mofe)[:200]}")
        wanted = wanted or mofe.get("routing", False)
    elif not header_on:
        return body, None, None  # "mofe" only inside some string: not ours
    if not wanted:
        return _dumps(request), None, None
    xargs = request.get("vllm_xargs")
    if xargs is None:
        xargs = {}
    if not isinstance(xargs, dict):
        return _dumps(request), None, None  # vLLM rejects the wrong type itself
    key = key_fn()
    request["vllm_xargs"] = {**xargs, "mofe_routing": key}
    return _dumps(request), key, request


class RoutingOptIn:
    """Pure ASGI middleware (streams are passed chunk by chunk, never buffered)."""

    def __init__(self, app, fetcher: Callable[[], object | None]):
        self.app, self.fetcher = app, fetcher

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] not in PATHS):
            return await self.app(scope, receive, send)
        header_on = any(k == HEADER and v.strip().lower() in _TRUE
                        for k, v in scope["headers"])
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client gone before the body arrived
                return await self.app(scope, _replay([], message), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        fetcher = self.fetcher()
        try:
            new_body, key, request = opt_in_body(body, header_on,
                                                 fetcher.new_key if fetcher else _no_key)
        except OptInError as exc:
            return await error_response(str(exc), 400, "BadRequestError",
                                        param="mofe")(scope, receive, send)
        if key is not None and fetcher is None:
            return await error_response("per-request routing is not available on this "
                                        "server", 503, "ServiceUnavailableError",
                                        param="mofe")(scope, receive, send)
        if new_body is body:
            return await self.app(scope, _replay([body], None, receive), send)
        scope = dict(scope, headers=[(k, v) for k, v in scope["headers"]
                                     if k != b"content-length"]
                     + [(b"content-length", str(len(new_body)).encode())])
        if key is None:  # "mofe": {"routing": false}: only the field is dropped
            return await self.app(scope, _replay([new_body], None, receive), send)
        stream = bool(request.get("stream"))
        reply = (_StreamReply if stream else _JsonReply)(send, fetcher, key)
        token = None
        if getattr(fetcher, "access_log", False):  # --routing-access-log
            reply.note = access_log.Note()
            token = access_log.current.set(reply.note)
        try:
            await self.app(scope, _replay([new_body], None, receive), reply.send)
        finally:
            reply.close()
            if token is not None:
                access_log.current.reset(token)


def _no_key() -> str:
    return ""


def _replay(bodies: list[bytes], last: dict | None, receive=None):
    """An ASGI receive that hands out `bodies` as one request body, then `last` or the
    original receive (disconnect notifications)."""
    queue = [{"type": "http.request", "body": b"".join(bodies), "more_body": False}]

    async def replay():
        if queue:
            return queue.pop()
        if last is not None:
            return last
        return await receive()

    return replay


class _Reply:
    def __init__(self, send, fetcher, key: str):
        self._send, self.fetcher, self.key = send, fetcher, key
        self.fetched = False
        self.note: access_log.Note | None = None

    async def summary(self) -> dict:
        self.fetched = True
        summary = await self.fetcher.summary(self.key)
        if self.note is not None:
            access_log.finish(self.note, summary)
        return summary

    def close(self) -> None:
        if not self.fetched:  # error response, client gone, exception: free the worker slot
            self.fetcher.release(self.key)
        if self.note is not None and not self.note.done:
            access_log.finish(self.note, None)


class _JsonReply(_Reply):
    """Non-streaming: hold the response, add `mofe_routing` to the JSON body."""

    def __init__(self, send, fetcher, key):
        super().__init__(send, fetcher, key)
        self.start: dict | None = None
        self.body: list[bytes] = []

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] != 200:
                self.start = None
                return await self._send(message)
            self.start = message
            return None
        if message["type"] != "http.response.body" or self.start is None:
            return await self._send(message)
        self.body.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        body = _with_field(b"".join(self.body), "mofe_routing", await self.summary())
        headers = [(k, v) for k, v in self.start.get("headers", [])
                   if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self.start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


class _StreamReply(_Reply):
    """Streaming (SSE): events pass through as they come; the final usage chunk is held
    until `[DONE]` and gets `mofe_routing`, or a routing chunk is added before `[DONE]`."""

    def __init__(self, send, fetcher, key):
        super().__init__(send, fetcher, key)
        self.streaming = False
        self.pending = b""
        self.held_usage: bytes | None = None
        self.last_data: bytes | None = None

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.streaming = message["status"] == 200
            return await self._send(message)
        if message["type"] != "http.response.body" or not self.streaming:
            return await self._send(message)
        more = message.get("more_body", False)
        data = self.pending + message.get("body", b"")
        events = data.split(b"\n\n")
        self.pending = events.pop()  # incomplete tail (b"" after a whole event)
        out = [await self._event(event) for event in events]
        if not more:
            if self.held_usage is not None:  # stream ended without [DONE]
                out.append(self.held_usage + b"\n\n")
                self.held_usage = None
            out.append(self.pending)
            self.pending = b""
        payload = b"".join(out)
        if payload or not more:
            await self._send({"type": "http.response.body", "body": payload, "more_body": more})

    async def _event(self, event: bytes) -> bytes:
        if event.strip() == _DONE:
            final = await self._final_chunk()
            return final + event + b"\n\n"
        held, self.held_usage = self.held_usage, None  # anything after it: not final
        out = b"" if held is None else held + b"\n\n"
        if event.startswith(b"data: {"):
            self.last_data = event
            if b'"choices":[]' in event and b'"usage":{' in event:
                self.held_usage = event  # vLLM's final usage chunk: held until [DONE]
                return out
        return out + event + b"\n\n"

    async def _final_chunk(self) -> bytes:
        summary = await self.summary()
        if self.held_usage is not None:
            event, self.held_usage = self.held_usage, None
            return _with_field(event, "mofe_routing", summary) + b"\n\n"
        last = {}
        if self.last_data is not None:
            try:
                last = json.loads(self.last_data[len(b"data: "):])
            except ValueError:
                last = {}
        chunk = {k: last[k] for k in ("id", "object", "created", "model") if k in last}
        chunk.update(choices=[], mofe_routing=summary)
        return b"data: " + _dumps(chunk) + b"\n\n"

