"""Thin FastAPI routes for the routing API; logic lives in serving.py.

With --api-key set, the key guards them like every other route (mofe_serve.auth).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from ..errors import error_response
from .protocol import RoutingListResponse, RoutingResetResponse, RoutingResponse
from .serving import RoutingNotReady, RoutingUnavailable, ServingRouting, UnknownModel

router = APIRouter()


def _routing(request: Request) -> ServingRouting:
    return request.app.state.mofe_routing


def _unavailable(exc: Exception) -> JSONResponse:
    return error_response(str(exc), 503, "ServiceUnavailableError")


def _unknown(exc: Exception) -> JSONResponse:
    return error_response(str(exc), 404, "NotFoundError", param="model")


@router.get("/v1/routing", response_model=RoutingResponse | RoutingListResponse)
async def get_routing(request: Request, model: str | None = None):
    """The routing window of `model`; without it, the server's only model, or every
    variant (`{"object": "list", "data": [...]}`) on a server running a family."""
    try:
        return _routing(request).get(model)
    except UnknownModel as exc:
        return _unknown(exc)
    except (RoutingNotReady, RoutingUnavailable) as exc:
        return _unavailable(exc)


@router.post("/v1/routing/reset", response_model=RoutingResetResponse)
async def reset_routing(request: Request, model: str | None = None):
    """Start a new window for `model`, or for every model the server runs."""
    try:
        return await _routing(request).reset(model)
    except UnknownModel as exc:
        return _unknown(exc)
    except RoutingUnavailable as exc:
        return _unavailable(exc)


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
