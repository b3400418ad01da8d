"""`mofe dev ...`: developer tools."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def dev_cli() -> None:
    """Developer tools: the tiny offline model kit."""


@dev_cli.command("tiny-experts")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--experts", default=4, show_default=True, help="Number of dense experts.")
@click.option("--seed", default=0, show_default=True)
@click.option("--hidden-size", default=128, show_default=True)
@click.option("--layers", default=4, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def tiny_experts(out: Path, experts: int, seed: int, hidden_size: int, layers: int,
                 overwrite: bool) -> None:
    """Build a tokenizer, dense Llama base, EXPERTS dense experts, data and mofe.yaml in OUT."""
    import time

    from .kit import KitSizes, build_kit

    start = time.perf_counter()
    sizes = KitSizes(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_layers=layers)
    try:
        path = build_kit(out, experts=experts, seed=seed, sizes=sizes, overwrite=overwrite)
    except (FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"kit written to {path} in {time.perf_counter() - start:.1f}s")
    for sub in ("tokenizer", "base", "experts", "data", "mofe.yaml"):
        click.echo(f"  {path / sub}")
