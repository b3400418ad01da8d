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
