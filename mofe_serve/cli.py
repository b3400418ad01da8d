"""`mofe serve REF`: vLLM's OpenAI-compatible server with MoFE routing metrics.

Imports nothing heavy at module level: vLLM is imported once the command runs.
"""

from __future__ import annotations

import os

import click


@click.command(
    "serve",
    context_settings=dict(ignore_unknown_options=True, allow_extra_args=True,
                          help_option_names=["-h", "--help"]),
)
@click.argument("ref")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--api-key", default=None, envvar="MOFE_API_KEY",
              help="Require 'Authorization: Bearer KEY' on every route but /health, /ping, "
                   "/version, /metrics and the API docs (env MOFE_API_KEY).")
@click.option("--metrics-require-key", is_flag=True,
              help="Put /metrics behind --api-key too (the scraper must send the key).")
@click.option("--served-model-name", "served_model_names", multiple=True,
              help="Name(s) clients use; repeatable. Default: NAME@VERSION and the REF.")
@click.option("--enforce-eager", is_flag=True, help="Disable torch.compile / CUDA graphs.")
@click.option("--routing-metrics-per-layer/--routing-metrics-summed", default=True,
              show_default=True,
              help="Per-expert counters per layer, or summed over layers (layer=\"all\").")
@click.option("--routing-poll-interval", default=1.0, show_default=True, type=float,
              help="Seconds between reads of the worker's routing counters.")
@click.option("--routing-access-log", is_flag=True,
              help="Access log lines of requests that asked for their routing summary end "
                   "with mofe_domain=DOMAIN:SHARE (their dominant domain).")
@click.pass_context
def serve_cli(ctx: click.Context, ref: str, host: str, port: int, api_key: str | None,
              served_model_names: tuple[str, ...], enforce_eager: bool,
              routing_metrics_per_layer: bool, routing_poll_interval: float,
              metrics_require_key: bool, routing_access_log: bool) -> None:
    """Serve REF (NAME, NAME@VERSION, NAME@ALIAS or a checkpoint path) with vLLM.

    Any further options (--dtype, --max-model-len, ...) go to vLLM's engine unchanged.
    Extra routes: GET /v1/routing, POST /v1/routing/reset; mofe_* series on /metrics.
    """
    from .engine import EngineSetupError
    from .launcher import RoutingOptions, parse_vllm_args, run, vllm_argv
    from .resolve import resolve_served_model

    if metrics_require_key and not (api_key or os.environ.get("VLLM_API_KEY")):
        raise click.UsageError("--metrics-require-key needs --api-key (or MOFE_API_KEY)")
    try:
        served = resolve_served_model(ref, list(served_model_names))
    except (LookupError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    argv = vllm_argv(served, host, port, api_key, enforce_eager, list(ctx.args))
    try:
        args = parse_vllm_args(argv)
        args.mofe_metrics_require_key = metrics_require_key  # read by mofe_serve.app
        routing = RoutingOptions(per_layer=routing_metrics_per_layer,
                                 poll_interval_s=routing_poll_interval,
                                 access_log_domain=routing_access_log)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"mofe serve: {served.names[0]} from {served.path}", err=True)
    try:
        run(args, served, routing)
    except EngineSetupError as exc:  # refused before any engine process started
        raise click.ClickException(str(exc)) from exc
