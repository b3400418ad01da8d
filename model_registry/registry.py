"""The registry: register, resolve, alias, delete and annotate versions of MoFE checkpoints.

A version is written in one metadata transaction after its files are staged and hashed, so
a process killed at any point leaves either a complete version or none (see fs_store.py).
Copies are content-addressed (cas.py): a version stores its own tensors, and each frozen
expert tensor is one blob shared by every version that has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from . import refs
from ._hooks import pause_point
from .cas import check_staged_hashes, make_dirs
from .config import (
    DB_FILE,
    REGISTRY_ENV,
    RegistryLocation,
    artifact_store,
    default_cache,
    metadata_store,
    parse_location,
)
from .describe import describe, load_manifest
from .errors import NotFoundError
from .frozen import manifest_consistency
from .inspection import inspect_checkpoint
from .manifest import MANIFEST_FILE
from .sqlite_store import now
from .stores import ArtifactStore, EvalEntry, MetadataStore, VersionInfo


class Registry:
    """root: a folder (embedded SQLite + artifact folder) or a registry URL
    (postgresql://...?artifacts=...; see config.py); None: $MOFE_REGISTRY, else the default
    folder.

    read_only=True is for lookups (get, resolve, list, show, verify): it creates no
    directory, runs no recovery sweep and no migration, and opens the database read-only; a
    registry that does not exist is a NotFoundError naming it.

    artifacts: an ArtifactStore, or the URL of an fsspec location (``s3://bucket/prefix``,
    ``file:///shared/registry``, any fsspec URL) holding blobs and versions; readers then
    download into `cache_dir` (default: $MOFE_REGISTRY_CACHE, else the user cache dir) and
    `storage_options` go to fsspec (e.g. ``{"endpoint_url": ...}`` for an S3-compatible
    server). Default: what the location names (config.artifact_store)."""

    def __init__(self, root: Path | str | RegistryLocation | None = None, *,
                 metadata: MetadataStore | None = None,
                 artifacts: ArtifactStore | str | None = None,
                 cache_dir: Path | str | None = None, storage_options: dict | None = None,
                 read_only: bool = False):
        self.location = parse_location(root)
        self.root = self.location.root
        self.read_only = read_only
        if (read_only and metadata is None and not self.location.is_postgres
                and not (self.root / DB_FILE).is_file()):
            raise NotFoundError(f"no model registry at {self.root} (no {DB_FILE}; set "
                                f"{REGISTRY_ENV} or --registry, or register a model first)")
        if not read_only:
            make_dirs(self.root)  # 0755: other accounts (a server's) read what it holds
        if isinstance(artifacts, str):
            from .remote_store import FsspecArtifactStore  # fsspec only when asked for

            artifacts = FsspecArtifactStore(artifacts, cache_dir or default_cache(),
                                            storage_options=storage_options)
        self.artifacts = artifacts or artifact_store(self.location, read_only)
        self.meta = metadata or metadata_store(self.location, read_only)
        # Leftovers of killed registrations are removed on a writer's open (none in flight).
        self.recovered = [] if read_only else self.artifacts.recover(self.meta.artifact_keys)
        self.freed: list[str] = []  # blobs the last delete removed

    def close(self) -> None:
        close = getattr(self.meta, "close", None)
        if close:
            close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- register -----------------------------------------------------------------------
    def register(self, ckpt: Path | str, name: str, aliases: list[str] | tuple[str, ...] = (),
                 mode: Literal["copy", "link"] = "copy") -> VersionInfo:
        refs.validate_name(name)
        aliases = [refs.validate_alias(a) for a in aliases]
        if mode not in ("copy", "link"):
            raise ValueError(f"mode must be 'copy' or 'link', not {mode!r}")
        src = Path(ckpt).expanduser().resolve()
        summary = inspect_checkpoint(src)
        manifest = load_manifest(src)
        if manifest and summary.kind == "mixtral":
            manifest_consistency(manifest, summary.config, src / MANIFEST_FILE)
        if mode == "link":
            new = describe(src, src, name, mode, summary.layout, False, self.resolve)
            pause_point("hashed")
            return self.meta.publish(new, aliases, lambda version: str(src))
        with self.artifacts.staging() as staged:
            # Content-addressed, per-expert layout: expert tensors are links to shared blobs.
            index = self.artifacts.stage(src, staged)
            pause_point("staged")
            new = describe(staged, src, name, mode, summary.layout, summary.layout == "fused",
                           self.resolve)
            check_staged_hashes(index, new.expert_hashes)
            self.artifacts.upload(staged, index)
            pause_point("hashed")
            placed: list[tuple[int, str]] = []

            def place(version: int) -> str:
                placed.append((version, self.artifacts.publish(staged, name, version)))
                return placed[-1][1]

            try:
                return self.meta.publish(new, aliases, place)
            except BaseException:
                for version, key in placed:  # rolled back: take the placed folder away too
                    if self.meta.get(name, version) is None:
                        self.artifacts.remove(key)
                raise

    # ---- look up ------------------------------------------------------------------------
    def get(self, ref: str) -> VersionInfo:
        r = refs.parse_ref(ref)
        if r.version is not None:
            version = r.version
        elif r.alias is not None:
            version = self.meta.alias_target(r.name, r.alias)
            if version is None:
                raise NotFoundError(f"{ref}: model {r.name!r} has no alias {r.alias!r}")
        else:
            version = self.meta.latest_version(r.name)
            if version is None:
                raise NotFoundError(self._unknown(r.name))
        info = self.meta.get(r.name, version)
        if info is None:
            if self.meta.latest_version(r.name) is None:
                raise NotFoundError(self._unknown(r.name))
            raise NotFoundError(f"{ref}: model {r.name!r} has no version {version}")
        return info

    def _unknown(self, name: str) -> str:
        known = ", ".join(m.name for m in self.meta.models()) or "none"
        return f"model {name!r} is not registered (registered: {known})"

    def path_of(self, info: VersionInfo) -> Path:
        if info.storage == "copy":
            return self.artifacts.local_path(info.artifact, info.files)
        path = Path(info.artifact)
        if not path.is_dir():
            raise NotFoundError(f"{info.ref} links to {path}, which no longer exists")
        return path

    def resolve(self, ref: str | Path) -> Path:
        """Local checkpoint directory for NAME, NAME@3, NAME@alias, or a plain path."""
        text = str(ref)
        if isinstance(ref, Path) or refs.looks_like_path(text):
            return _plain_path(text)
        r = refs.parse_ref(text)
        if self.meta.latest_version(r.name) is None and Path(text).is_dir():
            return _plain_path(text)  # an unregistered name that is a directory here
        return self.path_of(self.get(text))

    def list_models(self):
        return self.meta.models()

    def versions(self, name: str) -> list[VersionInfo]:
        refs.validate_name(name)
        found = self.meta.versions(name)
        if not found:
            raise NotFoundError(self._unknown(name))
        return found

    # ---- change -------------------------------------------------------------------------
    def set_alias(self, name: str, version: int | str, alias: str) -> int | None:
        refs.validate_name(name)
        return self.meta.set_alias(name, refs.validate_alias(alias), refs.parse_version(version))

    def remove_alias(self, name: str, alias: str) -> int:
        refs.validate_name(name)
        before = self.meta.remove_alias(name, refs.validate_alias(alias))
        if before is None:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}")
        return before

    def delete(self, ref: str, force: bool = False) -> VersionInfo:
        """Rows first, then the version's files, then every blob no remaining version uses
        (a crash in between leaves leftovers the next writer's open removes)."""
        info = self.get(ref)
        gone = self.meta.delete(info.name, info.version, force)
        self.freed = []
        if gone.storage == "copy":
            self.artifacts.remove(gone.artifact)
            self.freed = self.artifacts.collect_garbage(self.meta.artifact_keys)
        return gone

    def family(self, ref: str) -> list:
        """The versions whose expert tensors all have the same hashes as REF's (REF
        included), ordered by (name, version). Each member is a VersionInfo with
        `differs` (what sets it apart from REF) and `shared_tensors`; see family.py."""
        from .family import family

        return family(self, ref)

    def add_eval(self, ref: str, task: str, metric: str, value: float,
                 split: str | None = None, harness: str | None = None) -> VersionInfo:
        info = self.get(ref)
        self.meta.add_eval(info.name, info.version, EvalEntry(
            task=task, metric=metric, value=value, split=split, harness=harness, created_at=now()))
        return self.get(info.ref)


def _plain_path(text: str) -> Path:
    path = Path(text).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise NotFoundError(f"{text}: neither a registered model nor a checkpoint directory "
                            "(no config.json there)")
    return path


def resolve_ref(ref: str | Path, root: Path | str | None = None) -> Path:
    """Local checkpoint directory for a REF, using the default (or given) registry root.
    A lookup: writes nothing (see Registry(read_only=True))."""
    text = str(ref)
    if isinstance(ref, Path) or refs.looks_like_path(text):
        return _plain_path(text)
    try:
        registry = Registry(root, read_only=True)
    except NotFoundError as exc:
        if Path(text).is_dir():
            return _plain_path(text)
        raise NotFoundError(f"{text}: not a checkpoint directory, and {exc}") from None
    with registry:
        return registry.resolve(ref)
