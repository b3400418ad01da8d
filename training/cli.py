"""`mofe merge | train | verify | convert` (click commands; heavy imports inside each command)."""

from __future__ import annotations

from pathlib import Path

import click

_SET_HELP = "Override a config key, e.g. --set training.max_steps=50 (repeatable)."


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message is complete and user-facing: shown as "Error: ..." (exit 1)."""
    from model_registry.checkpoint import CheckpointError

    from .config import ConfigError
    from .data import DataError
    from .sources import MergeError
    from .train import TrainError

    return (ConfigError, DataError, MergeError, TrainError, CheckpointError, FileNotFoundError,
            FileExistsError)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
def merge_cli(config: Path, out: Path, overrides: tuple[str, ...]) -> None:
    """Merge the dense experts of CONFIG's `merge` section into a Mixtral MoE at OUT."""
    from .config import ConfigError, load_config
    from .merge import merge_experts

    try:
        cfg = load_config(config, list(overrides))
        if cfg.merge is None:
            raise ConfigError(f"{config}: has no `merge` section")
        manifest = merge_experts(cfg.merge, out.resolve(), cfg.seed)
    except _user_errors() as exc:
        raise _fail(exc) from exc
    click.echo(f"merged {manifest.num_experts} experts (top-{manifest.top_k}, "
               f"{manifest.dtype}) into {out}")


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--resume", is_flag=True, help="Continue from the newest saved checkpoint.")
def train_cli(config: Path, overrides: tuple[str, ...], resume: bool) -> None:
    """Merge (if needed), train with frozen expert FFNs (or another method), verify."""
    from rich.console import Console

    from .config import load_config
    from .train import run_training
    from .verify import render_table, verify_checkpoint

    console = Console()
    try:
        cfg = load_config(config, list(overrides))
        out = run_training(cfg, resume=resume, console=console)
        result = verify_checkpoint(out)
    except _user_errors() as exc:
        raise _fail(exc) from exc
    console.print(render_table(result))
    if result.ok:
        console.print(f"[green]checkpoint {out}: every expert FFN is bit-identical to its source")
    elif cfg.method == "full":
        console.print(f"checkpoint {out}: method full trains the expert FFNs, so "
                      f"{len(result.problems)} expert tensors differ from their sources "
                      "(expected; `mofe verify` will reject this checkpoint)")
    else:
        for p in result.problems:
            console.print(f"[red]{p}", soft_wrap=True)
        raise click.ClickException(f"{out}: expert FFNs changed under method {cfg.method}")
    console.print(f"wrote {out}")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--no-source", is_flag=True, help="Compare with mofe.json only, not the sources.")
def verify_cli(checkpoint: Path, no_source: bool) -> None:
    """Exit 0 only if every expert FFN tensor is bit-identical to its recorded source."""
    from rich.console import Console

    from .verify import render_table, verify_checkpoint

    console = Console()
    try:
        result = verify_checkpoint(checkpoint, check_sources=not no_source)
    except (*_user_errors(), ValueError) as exc:  # ValueError: unreadable mofe.json
        raise _fail(exc) from exc
    console.print(render_table(result))
    if not result.ok:
        for p in result.problems:
            console.print(f"[red]{p}", highlight=False, soft_wrap=True)
        raise click.ClickException(f"{checkpoint}: {len(result.problems)} expert tensors do not "
                                   "match their sources")
    console.print("[green]OK: every expert FFN tensor is bit-identical to its source")


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
def convert_cli(src: Path, dst: Path, overwrite: bool) -> None:
    """Rewrite a Mixtral checkpoint SRC into vLLM's per-expert layout at DST."""
    from model_registry.layout import convert_to_vllm_layout

    try:
        convert_to_vllm_layout(src, dst, overwrite=overwrite)
    except (*_user_errors(), ValueError) as exc:
        raise _fail(exc) from exc
    click.echo(f"wrote {dst} (per-expert layout)")
