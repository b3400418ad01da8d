"""From a REF on the command line to the checkpoint vLLM loads, its served names and domains.

Torch-free and vLLM-free (runs before the engine starts, and in `mofe serve --help` paths).
Nothing is converted or cached: MoFEMixtralForCausalLM reads both tensor layouts
(docs/format.md), so the checkpoint is served where it is. Resolving writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from model_registry.manifest import MANIFEST_FILE, Manifest


@dataclass
class ServedModel:
    path: Path  # what vLLM loads: the checkpoint the REF named, in either layout
    names: list[str]  # served model names; the first is the display name (NAME@VERSION)
    domains: list[str] = field(default_factory=list)  # by expert index; empty: unknown
    architecture: str = "MixtralForCausalLM"


def resolve_model_ref(ref: str) -> tuple[Path, str]:
    """(checkpoint directory, display name) for NAME, NAME@VERSION, NAME@ALIAS or a path.

    The one place that knows about the registry: registered refs resolve through
    `model_registry.registry.Registry` and display as NAME@VERSION; a plain path displays
    as its directory name.
    """
    from model_registry.refs import looks_like_path

    if looks_like_path(ref) or (Path(ref).is_dir() and (Path(ref) / "config.json").is_file()):
        path = Path(ref).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{ref}: not a checkpoint directory (no config.json)")
        return path, path.name
    from model_registry.errors import NotFoundError
    from model_registry.registry import Registry

    try:
        registry = Registry(read_only=True)  # a lookup: creates and sweeps nothing
    except NotFoundError as exc:
        raise NotFoundError(f"{ref}: not a checkpoint directory, and {exc}") from None
    with registry:
        info = registry.get(ref)
        return registry.path_of(info), info.ref


def resolve_served_model(ref: str, served_names: list[str] | None = None) -> ServedModel:
    source, display = resolve_model_ref(ref)
    model_type = json.loads((source / "config.json").read_text()).get("model_type")
    if model_type != "mixtral":
        raise ValueError(f"{source}/config.json: model_type is {model_type!r}; mofe serve "
                         "serves Mixtral (MoE) checkpoints")
    names = list(served_names or [])
    if not names:
        from model_registry.refs import looks_like_path

        # NAME@VERSION first; the REF as typed (NAME@prod, NAME) is accepted too.
        names = [display] + ([ref] if ref != display and not looks_like_path(ref) else [])
    domains: list[str] = []
    if (source / MANIFEST_FILE).is_file():
        domains = Manifest.load(source).domains()
    return ServedModel(path=source, names=names,
                       domains=domains)
