"""`mofe serve REF [REF ...]`: vLLM's OpenAI-compatible server with MoFE routing metrics.

Several REFs (variants of one MoFE family) are served by one engine (mofe_serve.family).

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
@click.option("--family", "whole_family", is_flag=True,
              help="Serve every variant of REF's family (the registry's Registry.family): "
                   "one REF only.")
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
              metrics_require_key: bool, routing_access_log: bool,
              whole_family: bool) -> None:
    """Serve REF (NAME, NAME@VERSION, NAME@ALIAS or a checkpoint path) with vLLM.

    Several REFs (`mofe serve a@prod b@prod c@3 --dtype ...`, REFs first) serve variants of
    one family from one engine: every REF must have the same expert tensors. Each is served
    under NAME@VERSION and the REF as typed; a request's `model` picks its variant.

    Any further options (--dtype, --max-model-len, ...) go to vLLM's engine unchanged.
    Extra routes: GET /v1/routing, POST /v1/routing/reset; mofe_* series on /metrics.
    """
    from .engine import EngineSetupError
    from .launcher import RoutingOptions, parse_vllm_args, run, vllm_argv
    from .resolve import resolve_served_model

    if metrics_require_key and not (api_key or os.environ.get("VLLM_API_KEY")):
        raise click.UsageError("--metrics-require-key needs --api-key (or MOFE_API_KEY)")
    refs, extra = _leading_refs(ref, list(ctx.args))
    if whole_family:
        if len(refs) > 1:
            raise click.UsageError("--family takes one REF (its family is served)")
        refs = family_members(refs[0])
    if len(refs) > 1 and served_model_names:
        raise click.UsageError("--served-model-name applies to one REF; each variant of a "
                               "family is served under NAME@VERSION and its REF")
    family = None
    try:
        variants = [resolve_served_model(r, list(served_model_names)) for r in refs]
        if whole_family:  # REF and its family's entry for the same version: serve it once
            seen, kept = set(), []
            for variant, r in zip(variants, refs, strict=True):
                if variant.path not in seen:
                    seen.add(variant.path)
                    kept.append((variant, r))
            variants, refs = [v for v, _ in kept], [r for _, r in kept]
        if len(variants) > 1:
            from .family import build_family

            family = build_family(variants, refs)
    except (LookupError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    served = variants[0]
    argv = vllm_argv(served, host, port, api_key, enforce_eager, extra, family=family)
    try:
        args = parse_vllm_args(argv)
        args.mofe_metrics_require_key = metrics_require_key  # read by mofe_serve.app
        routing = RoutingOptions(per_layer=routing_metrics_per_layer,
                                 poll_interval_s=routing_poll_interval,
                                 access_log_domain=routing_access_log)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for variant in variants:
        click.echo(f"mofe serve: {variant.names[0]} from {variant.path}", err=True)
    try:
        run(args, served, routing, family)
    except EngineSetupError as exc:  # refused before any engine process started
        raise click.ClickException(str(exc)) from exc


def _leading_refs(ref: str, args: list[str]) -> tuple[list[str], list[str]]:
    """(REFs, vLLM arguments): the REFs are the first argument and every argument after it
    up to the first option."""
    refs = [ref]
    while args and not args[0].startswith("-"):
        refs.append(args.pop(0))
    return refs, args


def family_members(ref: str) -> list[str]:
    """The REFs of every variant in `ref`'s registry family (model_registry.family: the same
    expert tensors by canonical hash), `ref` as typed first, the others as NAME@VERSION."""
    from model_registry.registry import Registry

    with Registry(read_only=True) as registry:
        members = registry.family(ref)
    return [ref] + [m.ref for m in members if not m.is_ref]
