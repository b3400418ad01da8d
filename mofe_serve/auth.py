"""API key on every route, deny by default, answering in the OpenAI error format.

vLLM's AuthenticationMiddleware guards only paths under `/v1`, `/v2`, `/inference` and
`/cohere`; vLLM 0.32 also serves inference and state-changing routes outside them
(`/invocations`, `/tokenize`, `/generative_scoring`, `/scale_elastic_ep`, ...). With a key
set, `mofe serve` requires it on every path except an explicit allow-list of probes and
API docs; a route a later vLLM adds is guarded without anyone listing it. Same tokens and
constant-time comparison as vLLM (its `verify_token`), OPTIONS (CORS preflight) stays open
as in vLLM, and the 401 body is OpenAI's error shape instead of `{"error": "Unauthorized"}`.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

# Liveness/readiness probes, version and API docs: no model call, no state change.
OPEN_PATHS = frozenset({"/health", "/ping", "/version", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect", "/redoc"})
METRICS_PATH = "/metrics"

UNAUTHORIZED = {
    "error": {
        "message": "Missing or incorrect API key: send 'Authorization: Bearer <key>'.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


def open_paths(metrics_require_key: bool) -> frozenset[str]:
    """Paths answered without a key (everything else needs it)."""
    return OPEN_PATHS if metrics_require_key else OPEN_PATHS | {METRICS_PATH}


class ApiKeyMiddleware(AuthenticationMiddleware):
    """Pure ASGI: refuses every http/websocket request without a valid key, except OPTIONS
    and the allow-list. Paths are compared exactly (after removing root_path), so
    `/healthz` or `/metrics/x` are guarded."""

    def __init__(self, app, tokens: list[str], allow: frozenset[str]) -> None:
        super().__init__(app, tokens)
        self.allow = allow

    def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope.get("method") != "OPTIONS":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            if path not in self.allow and not self.verify_token(Headers(scope=scope)):
                return JSONResponse(UNAUTHORIZED, status_code=401)(scope, receive, send)
        return self.app(scope, receive, send)


def guard_all_routes(app: FastAPI, metrics_require_key: bool = False) -> int | None:
    """Replace vLLM's auth middleware (added when --api-key or VLLM_API_KEY is set) by
    `ApiKeyMiddleware`, at the same place in the stack and with the same tokens.

    Returns its index in `app.user_middleware` (outermost first), or None without a key.
    """
    for index, middleware in enumerate(app.user_middleware):
        if middleware.cls is AuthenticationMiddleware:
            tokens = middleware.kwargs["tokens"]
            app.user_middleware[index] = Middleware(
                ApiKeyMiddleware, tokens=tokens, allow=open_paths(metrics_require_key))
            app.middleware_stack = None  # already built by build_app: rebuild on first use
            return index
    return None
