"""Root `mofe` group: each subcommand is an import string resolved on first use."""

from __future__ import annotations

import importlib

import click

# name -> (import string of a click command, one-line help shown by `mofe --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("training.kit_cli:dev_cli", "Developer tools: the tiny offline model kit."),
    "merge": ("training.cli:merge_cli", "Merge dense experts into a Mixtral MoE (mergekit)."),
    "train": ("training.cli:train_cli", "Merge, freeze expert FFNs, instruction-tune, verify."),
    "verify": ("training.cli:verify_cli", "Check expert FFNs are bit-identical to their sources."),
    "convert": ("training.cli:convert_cli", "Rewrite a Mixtral checkpoint into vLLM's layout."),
    "registry": ("model_registry.cli:registry_cli", "Versioned registry of MoFE checkpoints."),
    "serve": ("mofe_serve.cli:serve_cli", "Serve a model with vLLM behind an OpenAI API."),
    "batch": ("mofe_batch.cli:batch_cli", "Batch medical QA scoring with routing reports."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        target, short_help = SUBCOMMANDS[name]
        if ctx.resilient_parsing or _listing_help(ctx):
            # Root --help only needs the one-line help: do not import the package.
            return click.Command(name, short_help=short_help, help=short_help)
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        command.name = name
        return command


def _listing_help(ctx: click.Context) -> bool:
    # True while click renders the root help page (it asks every command for short help).
    return getattr(ctx, "_mofe_listing", False)


class _Root(LazyGroup):
    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        ctx._mofe_listing = True  # type: ignore[attr-defined]
        try:
            super().format_commands(ctx, formatter)
        finally:
            ctx._mofe_listing = False  # type: ignore[attr-defined]


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mofe-serve", prog_name="mofe")
def cli() -> None:
    """MoFE Serve: build, register and serve Mixture-of-Frozen-Experts models."""


def main() -> None:
    cli()
