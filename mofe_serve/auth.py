"""vLLM's API-key check, answering in the OpenAI error format.

vLLM's AuthenticationMiddleware returns `{"error": "Unauthorized"}`; OpenAI clients and
tooling expect `{"error": {"message", "type", "param", "code"}}`. Same tokens, same guarded
paths (/v1, ...), same constant-time comparison: only the 401 body changes.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from vllm.entrypoints.serve.middleware.authenticate import (
    GUARDED_PREFIX,
    AuthenticationMiddleware,
)

UNAUTHORIZED = {
    "error": {
        "message": "Missing or incorrect API key: send 'Authorization: Bearer <key>'.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


class OpenAIAuthenticationMiddleware(AuthenticationMiddleware):
    def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope.get("method") != "OPTIONS":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            if path.startswith(GUARDED_PREFIX) and not self.verify_token(Headers(scope=scope)):
                return JSONResponse(UNAUTHORIZED, status_code=401)(scope, receive, send)
        return self.app(scope, receive, send)


def use_openai_auth_errors(app: FastAPI) -> None:
    """Swap vLLM's auth middleware class (if --api-key set one up) before the app starts."""
    swapped = False
    for middleware in app.user_middleware:
        if middleware.cls is AuthenticationMiddleware:
            middleware.cls = OpenAIAuthenticationMiddleware
            swapped = True
    if swapped:
        app.middleware_stack = None  # already built by build_app: rebuild on first request
