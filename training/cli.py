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
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its newest "
              "complete checkpoint.")
@click.option("--restart", is_flag=True, help="Discard an interrupted run's checkpoints "
              "(<output_dir>.work) and start over.")
def train_cli(config: Path, overrides: tuple[str, ...], resume: bool, restart: bool) -> None:
    """Merge (if needed), train with frozen expert FFNs (or another method), verify."""
    from rich.console import Console

    from .config import load_config
    from .train import run_training
    from .verify import render_table, verify_checkpoint

    console = Console()
    try:
        cfg = load_config(config, list(overrides))
        out = run_training(cfg, resume=resume, restart=restart, console=console)
        verdict = verify_checkpoint(out)
    except _user_errors() as exc:
        raise _fail(exc) from exc
    console.print(render_table(verdict, out))
    if verdict.status == "failed" and cfg.method == "full":
        console.print(f"checkpoint {out}: method full trains the expert FFNs, so "
                      f"{len(verdict.problems)} expert tensors differ from their sources "
                      "(expected; `mofe verify` will reject this checkpoint)")
    elif verdict.status == "failed":
        for p in verdict.problems:
            console.print(f"[red]{p}", soft_wrap=True)
        raise click.ClickException(f"{out}: expert FFNs changed under method {cfg.method}")
    else:
        console.print(f"checkpoint {out}: {verdict.summary}", highlight=False)
    console.print(f"wrote {out}")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--no-source", is_flag=True, help="Compare with mofe.json only, not the sources.")
def verify_cli(checkpoint: Path, no_source: bool) -> None:
    """Check that every expert FFN tensor is bit-identical to its recorded source.

    Exit 0: every expert matched its live source; 1: a tensor differs (or an error);
    3: every comparison made matched, but only mofe.json's hashes could be checked for
    some expert (source not reachable, or --no-source); 4: nothing could be compared."""
    from rich.console import Console

    from .verify import render_table, verify_checkpoint

    console = Console()
    try:
        verdict = verify_checkpoint(checkpoint, check_sources=not no_source)
    except (*_user_errors(), ValueError) as exc:  # ValueError: unreadable mofe.json
        raise _fail(exc) from exc
    console.print(render_table(verdict, checkpoint))
    if verdict.status == "failed":
        for p in verdict.problems:
            console.print(f"[red]{p}", highlight=False, soft_wrap=True)
        raise click.ClickException(f"{checkpoint}: {len(verdict.problems)} expert tensors do "
                                   "not match their sources")
    if verdict.exit_code == 0:
        console.print("[green]OK: every expert FFN tensor is bit-identical to its source")
    else:
        console.print(f"[yellow]NOT CONFIRMED against the sources: {verdict.summary}",
                      highlight=False, soft_wrap=True)
    raise SystemExit(verdict.exit_code)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
@click.option("--layout", type=click.Choice(["per_expert", "fused"]), default="per_expert",
              show_default=True, help="per_expert: what stock vLLM (without the MoFE plugin) "
              "reads; fused: transformers 5 / mergekit names.")
def convert_cli(src: Path, dst: Path, overwrite: bool, layout: str) -> None:
    """Rewrite Mixtral checkpoint SRC in another tensor layout at DST.

    `mofe serve` reads both layouts; this is for stock vLLM and other tools."""
    from model_registry.checkpoint import convert_checkpoint

    try:
        convert_checkpoint(src, dst, layout, overwrite=overwrite)
    except (*_user_errors(), ValueError) as exc:
        raise _fail(exc) from exc
    click.echo(f"wrote {dst} ({layout.replace('_', '-')} layout)")
