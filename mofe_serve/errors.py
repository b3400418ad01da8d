"""Every error body in OpenAI's shape, and no 5xx for a request that fails validation.

OpenAI's shape is `{"error": {"message", "type", "param", "code"}}` (vLLM's `ErrorResponse`).
vLLM already answers that way for its own errors; two gaps remain on vLLM 0.32's app:

* Starlette's router raises its own `HTTPException` for an unknown path (404) or a wrong
  method (405). vLLM registers a handler for FastAPI's subclass only, so those answered
  FastAPI's default `{"detail": "Not Found"}`.
* Pydantic turns only ValueError/AssertionError raised in a validator into a validation
  error. Anything else a request model's validator raises on malformed input (vLLM's
  `check_structured_outputs_count` does `data.get(...)` on whatever `structured_outputs`
  holds: `AttributeError` for a number) escaped as a 500. `ValidationBoundary` is the one
  place that turns an exception raised *inside a pydantic validation call* into a 400,
  whichever route, field or validator raised it; any other exception is left to vLLM's
  handlers (a server bug stays a 500).
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import pydantic
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

logger = logging.getLogger("mofe_serve")


def error_body(message: str, status: int, kind: str | None = None,
               param: str | None = None) -> dict:
    """OpenAI's error shape, with vLLM's conventions: `code` is the HTTP status and
    `type` the status phrase unless given (e.g. "NotFoundError")."""
    return {"error": {"message": message, "type": kind or HTTPStatus(status).phrase,
                      "param": param, "code": status}}


def error_response(message: str, status: int, kind: str | None = None,
                   param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, kind, param), status_code=status,
                        headers=headers)


async def http_exception_handler(request: Request, exc: StarletteHTTPException):
    # Keeps the exception's headers (405 carries `Allow`), unlike vLLM's handler.
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"Not Found: no route {request.method} {request.url.path}"
    return error_response(detail, exc.status_code, headers=exc.headers)


# Entry points through which a request's JSON reaches pydantic validators: FastAPI validates
# request bodies/params with TypeAdapter.validate_python; vLLM's /invocations dispatcher too.
_VALIDATION_CODE = frozenset({
    pydantic.TypeAdapter.validate_python.__code__,
    pydantic.TypeAdapter.validate_json.__code__,
    pydantic.TypeAdapter.validate_strings.__code__,
    pydantic.BaseModel.model_validate.__code__,
    pydantic.BaseModel.model_validate_json.__code__,
})


def raised_while_validating(exc: BaseException) -> bool:
    """True when `exc` propagated out of a pydantic validation call (a validator raised
    something other than ValueError/AssertionError, which pydantic would have wrapped)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in _VALIDATION_CODE:
            return True
        tb = tb.tb_next
    return False


class ValidationBoundary:
    """Pure ASGI middleware, innermost of the user middlewares: an exception raised while
    validating a request becomes 400 in OpenAI's shape (before any response byte is
    sent); everything else propagates unchanged to vLLM's handlers."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracking(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started or not raised_while_validating(exc):
                raise
            logger.info("invalid request to %s: %s: %s", scope.get("path"),
                        type(exc).__name__, exc)
            response = error_response(
                f"Invalid request: {type(exc).__name__}: {exc}", 400, "BadRequestError")
            await response(scope, receive, send)


def use_openai_errors(app: FastAPI) -> None:
    """Install both fixes on vLLM's built app (before it serves its first request).
    FastAPI's own HTTPException subclass keeps vLLM's handler (already OpenAI-shaped)."""
    from starlette.middleware import Middleware

    app.exception_handlers[StarletteHTTPException] = http_exception_handler
    app.user_middleware.append(Middleware(ValidationBoundary))
    app.middleware_stack = None
