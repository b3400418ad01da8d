"""Everything recorded about a checkpoint at registration: validation, hashes, frozen check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .checkpoint import expert_hashes
from .errors import InvalidCheckpointError, RegistryError
from .frozen import check_frozen
from .inspection import hash_files, inspect_checkpoint
from .manifest import MANIFEST_FILE, Manifest, ModelSource
from .stores import NewVersion

Resolver = Callable[[str], Path]


def describe(stored: Path, src: Path, name: str, mode: str, source_layout: str,
             converted: bool, resolve: Resolver) -> NewVersion:
    """Validate and hash the bytes that will be stored (`stored`; `src` is what was given)."""
    summary = inspect_checkpoint(stored)
    manifest = load_manifest(stored)
    hashes = expert_hashes(stored)
    status, details = "unchecked", {"summary": "no mofe.json"}
    if summary.kind == "llama":
        details = {"summary": "dense model: no frozen experts to check"}
    elif manifest:
        status, details = check_frozen(manifest, hashes, summary.expert_dtype,
                                       lambda rec: locate_source(rec, src, resolve))
    return NewVersion(
        name=name, storage=mode, source_path=str(src), kind=summary.kind,
        layout=summary.layout, source_layout=source_layout, converted=converted,
        vllm_loadable=summary.vllm_loadable, config=summary.config,
        manifest=manifest.model_dump(mode="json") if manifest else None,
        frozen_check=status, frozen_details=details, files=hash_files(stored),
        expert_hashes=hashes)


def locate_source(rec: ModelSource, relative_to: Path, resolve: Resolver) -> Path | str:
    """A local directory holding `rec`, or why there is none (hub ids are never fetched)."""
    reason = ""
    if rec.registry_ref:
        try:
            return resolve(rec.registry_ref)
        except RegistryError as exc:
            reason = f"registry ref {rec.registry_ref}: {exc}"
    p = Path(rec.source).expanduser()
    for cand in ([p] if p.is_absolute() else [relative_to / p, Path.cwd() / p]):
        if (cand / "config.json").is_file():
            return cand.resolve()
    return "; ".join(x for x in (reason, f"{rec.source}: no local checkpoint there "
                                 "(hub ids are not fetched)") if x)


def load_manifest(ckpt: Path) -> Manifest | None:
    if not (ckpt / MANIFEST_FILE).exists():
        return None
    try:
        return Manifest.load(ckpt)
    except ValueError as exc:
        raise InvalidCheckpointError(str(exc)) from exc
