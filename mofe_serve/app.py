"""The FastAPI app `mofe serve` serves: vLLM's `build_app` plus the MoFE pieces.

Structure only (routes, middleware order, error handlers); engine-backed state is filled
in by the launcher (`init_app_state`, routing state). Tests build the same app with this
function, so what they check is what the server runs.

Middleware, outermost first (starlette's `user_middleware` order):
    vLLM's ScalingMiddleware, ApiKeyMiddleware (if a key is set), RequestActivity,
    RoutingOptIn, CORS, Prometheus instrumentator, ValidationBoundary
so requests refused for a missing key never reach the routing poller's activity hook nor
the per-request routing opt-in (which reads `app.state.mofe_request_routing`, the
launcher's `SummaryFetcher`).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable

from fastapi import FastAPI
from starlette.middleware import Middleware

from .auth import guard_all_routes
from .errors import use_openai_errors
from .openai_compat import router as openai_compat_router
from .routing.api_router import RequestActivity, attach_router
from .routing.opt_in import RoutingOptIn


def build_mofe_app(args: Namespace, supported_tasks: tuple[str, ...], model_config,
                   on_activity: Callable[[], None]) -> FastAPI:
    from vllm.entrypoints.launchers.app import build_app

    app = build_app(args, supported_tasks, model_config)
    attach_router(app)
    app.include_router(openai_compat_router)
    # With a key: every route needs it except the documented allow-list (auth.OPEN_PATHS).
    auth_index = guard_all_routes(app, getattr(args, "mofe_metrics_require_key", False))
    use_openai_errors(app)
    activity_index = 0 if auth_index is None else auth_index + 1
    app.user_middleware.insert(activity_index,
                               Middleware(RequestActivity, on_activity=on_activity))
    app.user_middleware.insert(
        activity_index + 1,
        Middleware(RoutingOptIn,
                   fetcher=lambda: getattr(app.state, "mofe_request_routing", None)))
    app.middleware_stack = None  # build_app built it already: rebuilt on first request
    return app
