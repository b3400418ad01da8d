"""Everything recorded about a checkpoint at registration: validation, hashes, frozen check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .checkpoint import expert_hashes
from .errors import InvalidCheckpointError
from .frozen import frozen_verdict, locate_source
from .inspection import hash_files, inspect_checkpoint
from .manifest import MANIFEST_FILE, Manifest
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
        verdict = frozen_verdict(manifest, stored, lambda rec: locate_source(rec, src, resolve))
        status, details = verdict.status, verdict.details()
    return NewVersion(
        name=name, storage=mode, source_path=str(src), kind=summary.kind,
        layout=summary.layout, source_layout=source_layout, converted=converted,
        vllm_loadable=summary.vllm_loadable, config=summary.config,
        manifest=manifest.model_dump(mode="json") if manifest else None,
        frozen_check=status, frozen_details=details, files=hash_files(stored),
        expert_hashes=hashes)


def load_manifest(ckpt: Path) -> Manifest | None:
    if not (ckpt / MANIFEST_FILE).exists():
        return None
    try:
        return Manifest.load(ckpt)
    except ValueError as exc:
        raise InvalidCheckpointError(str(exc)) from exc
