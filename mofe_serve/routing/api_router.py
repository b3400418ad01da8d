"""Thin FastAPI routes for the routing API; logic lives in serving.py.

Paths are under /v1, so vLLM's API-key middleware guards them like the OpenAI routes.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from .protocol import RoutingResetResponse, RoutingResponse
from .serving import RoutingNotReady, ServingRouting

router = APIRouter()


def _routing(request: Request) -> ServingRouting:
    return request.app.state.mofe_routing


def _error(message: str, status: int, kind: str) -> JSONResponse:
    # OpenAI error shape, like vLLM's own errors.
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": status}}, status_code=status)


@router.get("/v1/routing", response_model=RoutingResponse)
async def get_routing(request: Request):
    try:
        return _routing(request).get()
    except RoutingNotReady as exc:
        return _error(str(exc), 503, "ServiceUnavailableError")


@router.post("/v1/routing/reset", response_model=RoutingResetResponse)
async def reset_routing(request: Request):
    return await _routing(request).reset()


def attach_router(app: FastAPI) -> None:
    app.include_router(router)


# Requests that never reach the engine: they do not wake the routing poller.
_QUIET_PATHS = frozenset({"/health", "/ping", "/metrics", "/version", "/v1/models",
                          "/v1/routing", "/load"})


class RequestActivity:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide client
    disconnects) that tells the routing poller when a request starts and ends."""

    def __init__(self, app, on_activity):
        self.app, self.on_activity = app, on_activity

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in _QUIET_PATHS:
            return await self.app(scope, receive, send)
        self.on_activity()
        try:
            return await self.app(scope, receive, send)
        finally:
            self.on_activity()
