"""`mofe registry ...`: the command-line face of Registry (click; rich for people, --json for
machines). Errors print one line naming what is wrong and exit 1; `verify` exits 1 on any
mismatch (3: the frozen claim could be checked against mofe.json's hashes only)."""

from __future__ import annotations

import functools
import json
import sys

import click

from .refs import LATEST


def _registry(ctx: click.Context, write: bool = False):
    """The registry; lookups (write=False) open it read-only: they create nothing."""
    from .registry import Registry  # lazily: `--help` stays instant

    # The registry group's dict (holding --registry), not the root's: under `mofe` the root
    # context is the `mofe` group, which knows nothing of --registry.
    obj = ctx.find_object(dict)
    if obj is None:
        obj = ctx.ensure_object(dict)
    if "registry" not in obj:
        obj["registry"] = Registry(obj.get("root"), read_only=not write)
        ctx.find_root().call_on_close(obj["registry"].close)
    return obj["registry"]


def _errors(fn):
    """Turn registry/checkpoint errors into a clean one-line message and exit status 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .checkpoint import CheckpointError
        from .errors import RegistryError
        try:
            return fn(*args, **kwargs)
        except (RegistryError, CheckpointError, FileExistsError, PermissionError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
    return wrapper


def _console():
    from rich.console import Console
    # Piped output is not cropped to 80 columns: tables and trees stay readable in logs.
    return Console(width=None if sys.stdout.isatty() else 160)


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry", "root", metavar="FOLDER|URL", envvar="MOFE_REGISTRY",
              help="Registry folder (embedded SQLite), or postgresql://USER@HOST/DB"
                   "[?artifacts=FOLDER] for a team registry [env MOFE_REGISTRY; default: "
                   "user data dir/mofe-registry]")
@click.pass_context
def registry_cli(ctx: click.Context, root: str | None) -> None:
    """Versioned, verifiable registry of MoFE checkpoints (SQLite or PostgreSQL metadata +
    artifact folder).

    REF is NAME (latest version), NAME@3, NAME@ALIAS (e.g. NAME@prod) or a checkpoint path.
    """
    ctx.ensure_object(dict)["root"] = root


@registry_cli.command()
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Model name: [a-z0-9][a-z0-9._-]{0,63}")
@click.option("--alias", "aliases", multiple=True, help="Point this alias at the new version.")
@click.option("--copy/--link", "copy", default=True, show_default=True,
              help="Copy into the registry (stored as given) or only record the directory "
                   "where it is.")
@click.pass_context
@_errors
def register(ctx, ckpt: str, name: str, aliases: tuple[str, ...], copy: bool) -> None:
    """Validate, hash and register checkpoint CKPT; print NAME@VERSION."""
    info = _registry(ctx, write=True).register(ckpt, name, list(aliases), "copy" if copy else "link")
    if info.frozen_check == "failed":
        click.echo(f"warning: frozen check FAILED: {info.frozen_details.get('summary')}",
                   err=True)
    if not info.vllm_loadable:
        click.echo("note: fused layout stored as given; `mofe serve` reads it, stock vLLM "
                   "needs `mofe convert` first", err=True)
    click.echo(info.ref)


@registry_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@_errors
def list_cmd(ctx, as_json: bool) -> None:
    """Registered models with their latest version and aliases."""
    models = _registry(ctx).list_models()
    if as_json:
        return _print_json([m.model_dump() for m in models])
    from .render import models_table
    _console().print(models_table(models))


@registry_cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_errors
def show(ctx, ref: str, as_json: bool) -> None:
    """Everything recorded about one version, with its evaluations."""
    reg = _registry(ctx)
    info = reg.get(ref)
    try:
        path = str(reg.path_of(info))
    except Exception as exc:  # still show the record of a damaged entry
        path = f"UNAVAILABLE ({exc})"
    if as_json:
        return _print_json(info.model_dump() | {"ref": info.ref, "path": path})
    from .render import show as render_show
    render_show(_console(), info, path)


@registry_cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_errors
def versions(ctx, name: str, as_json: bool) -> None:
    """All versions of NAME."""
    found = _registry(ctx).versions(name)
    if as_json:
        return _print_json([v.model_dump(exclude={"files", "config", "manifest"})
                            | {"ref": v.ref} for v in found])
    from .render import versions_table
    _console().print(versions_table(name, found))


@registry_cli.command()
@click.argument("name")
@click.argument("version")
@click.argument("alias")
@click.pass_context
@_errors
def alias(ctx, name: str, version: str, alias: str) -> None:
    """Point ALIAS of NAME at VERSION (moving it if it pointed elsewhere)."""
    before = _registry(ctx, write=True).set_alias(name, version, alias)
    moved = f" (was {before})" if before is not None else ""
    click.echo(f"{name}@{alias} -> {name}@{int(version.lstrip('v'))}{moved}")


@registry_cli.command()
@click.argument("name")
@click.argument("alias")
@click.pass_context
@_errors
def unalias(ctx, name: str, alias: str) -> None:
    """Remove ALIAS of NAME."""
    before = _registry(ctx, write=True).remove_alias(name, alias)
    click.echo(f"removed {name}@{alias} (pointed at {before})")


@registry_cli.command()
@click.argument("ref")
@click.pass_context
@_errors
def resolve(ctx, ref: str) -> None:
    """Print the local checkpoint directory of REF."""
    click.echo(str(_registry(ctx).resolve(ref)))


@registry_cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_errors
def verify(ctx, ref: str, as_json: bool) -> None:
    """Re-hash every file and expert tensor of REF and re-check its frozen claim.

    Exit 0: intact, and every expert is bit-identical to its live source (or there is no
    claim to check); 1: a mismatch; 3: intact, but the frozen claim rests on mofe.json's
    hashes only (a source is not reachable). `mofe verify` states the same verdict."""
    from .verify import verify as run_verify
    report = run_verify(_registry(ctx), ref)
    if as_json:
        _print_json(report.model_dump() | {"ok": report.ok, "exit_code": report.exit_code})
    else:
        for p in report.problems:
            click.echo(f"MISMATCH {p}", err=True)
        state = "OK" if not report.problems else f"FAILED ({len(report.problems)} problem(s))"
        click.echo(f"{report.ref}: {state}; {report.files_checked} files, "
                   f"{report.tensors_checked} expert tensors checked")
        click.echo(f"frozen check: {report.frozen_check}: {report.frozen_summary}")
    sys.exit(report.exit_code)


@registry_cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_errors
def lineage(ctx, ref: str, as_json: bool) -> None:
    """Tree from REF to its merged parent, base model and source experts."""
    from .lineage import lineage as build
    node = build(_registry(ctx), ref)
    if as_json:
        return _print_json(node)
    from .render import lineage_tree
    _console().print(lineage_tree(node))


@registry_cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_errors
def family(ctx, ref: str, as_json: bool) -> None:
    """Versions whose expert tensors are REF's (its family), and what differs between them."""
    reg = _registry(ctx)
    members = reg.family(ref)
    if as_json:
        return _print_json([m.model_dump(exclude={"files", "config", "manifest"})
                            | {"ref": m.ref} for m in members])
    from .render import family_table
    _console().print(family_table(reg.get(ref).ref, members))


@registry_cli.group("eval")
def eval_group() -> None:
    """Evaluation results attached to versions."""


@eval_group.command("add")
@click.argument("ref")
@click.option("--task", required=True)
@click.option("--metric", required=True)
@click.option("--value", required=True, type=float)
@click.option("--split")
@click.option("--harness")
@click.pass_context
@_errors
def eval_add(ctx, ref, task, metric, value, split, harness) -> None:
    """Record TASK/METRIC = VALUE for REF."""
    info = _registry(ctx, write=True).add_eval(ref, task, metric, value, split, harness)
    click.echo(f"{info.ref}: {task} {metric} = {value:g}")


@registry_cli.command()
@click.argument("ref")
@click.option("--force", is_flag=True, help="Delete even if aliases point at it (removes them).")
@click.pass_context
@_errors
def delete(ctx, ref: str, force: bool) -> None:
    """Delete one version (its copied files too; a linked directory is left alone)."""
    if "@" not in ref or ref.endswith(f"@{LATEST}"):
        raise click.UsageError("name the version to delete explicitly: NAME@VERSION or NAME@ALIAS")
    gone = _registry(ctx, write=True).delete(ref, force)
    click.echo(f"deleted {gone.ref}")


if __name__ == "__main__":
    registry_cli()
