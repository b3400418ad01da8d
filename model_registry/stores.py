"""Records and the two storage interfaces the registry is written against.

`MetadataStore` keeps rows (versions, files, hashes, aliases, evals); `ArtifactStore` keeps
checkpoint directories. One machine: SQLite + a local folder. A team: PostgreSQL
(pg_store.py) + a shared folder or a bucket (see the package doc and config.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

FrozenStatus = Literal["passed", "failed", "unchecked"]


class FileEntry(BaseModel):
    path: str  # relative to the checkpoint directory, '/'-separated
    size: int
    sha256: str


class EvalEntry(BaseModel):
    task: str
    metric: str
    value: float
    split: str | None = None
    harness: str | None = None
    created_at: str = ""


class NewVersion(BaseModel):
    """Everything known about a checkpoint before it gets a version number."""

    name: str
    storage: Literal["copy", "link"]
    source_path: str
    kind: Literal["mixtral", "llama"]
    layout: str
    source_layout: str
    converted: bool = False
    vllm_loadable: bool
    config: dict[str, Any]
    manifest: dict[str, Any] | None = None
    frozen_check: FrozenStatus = "unchecked"
    frozen_details: dict[str, Any] = Field(default_factory=dict)
    files: list[FileEntry]
    expert_hashes: dict[int, dict[str, str]] = Field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class VersionInfo(BaseModel):
    """One registered version as stored (expert hashes are fetched separately: they are many)."""

    name: str
    version: int
    created_at: str
    storage: Literal["copy", "link"]
    artifact: str
    source_path: str
    kind: str
    layout: str
    source_layout: str
    converted: bool
    vllm_loadable: bool
    config: dict[str, Any]
    manifest: dict[str, Any] | None
    frozen_check: FrozenStatus
    frozen_details: dict[str, Any]
    total_bytes: int
    aliases: list[str] = Field(default_factory=list)
    files: list[FileEntry] = Field(default_factory=list)
    evals: list[EvalEntry] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ModelSummary(BaseModel):
    name: str
    versions: int
    latest: int
    aliases: dict[str, int]
    updated_at: str


class MetadataStore(Protocol):
    def publish(self, new: NewVersion, aliases: list[str],
                place_artifact: Callable[[int], str]) -> VersionInfo:
        """Allocate the next version, call place_artifact(version) -> artifact key, and write
        every row, all in one transaction: either all of it is visible or none."""
        ...

    def get(self, name: str, version: int) -> VersionInfo | None: ...
    def latest_version(self, name: str) -> int | None: ...
    def alias_target(self, name: str, alias: str) -> int | None: ...
    def models(self) -> list[ModelSummary]: ...
    def versions(self, name: str) -> list[VersionInfo]: ...
    def set_alias(self, name: str, alias: str, version: int) -> int | None: ...
    def remove_alias(self, name: str, alias: str) -> int | None: ...
    def delete(self, name: str, version: int, force: bool) -> VersionInfo: ...
    def add_eval(self, name: str, version: int, entry: EvalEntry) -> None: ...
    def expert_hashes(self, name: str, version: int) -> dict[int, dict[str, str]]: ...
    def find_by_source(self, source_path: str) -> list[VersionInfo]: ...
    def find_by_tensor_hash(self, sha256: str) -> list[tuple[str, int, int, str]]: ...
    def artifact_keys(self) -> set[str]: ...


class ArtifactStore(Protocol):
    """Version directories, content-addressed (cas.py): a version's own files plus links to
    shared expert blobs. Local folder: fs_store.py; any fsspec URL: remote_store.py."""

    def staging(self) -> AbstractContextManager[Path]:
        """A fresh local path to build a version at; cleaned up on exit."""
        ...

    def stage(self, src: Path, staged: Path) -> Any:
        """Build checkpoint `src` at `staged` (cas.build_version); return its StoreIndex."""
        ...

    def upload(self, staged: Path, index: Any) -> None:
        """Make the staged version's blobs and files available to `publish` (outside the
        metadata transaction: may be slow)."""
        ...

    def publish(self, staged: Path, name: str, version: int) -> str:
        """Move a staged version into place (called inside the metadata transaction)."""
        ...

    def local_path(self, key: str, files: list[FileEntry] | None = None) -> Path:
        """A local directory holding the artifact (downloaded and checked against `files`
        where the store is remote); raises UnsafePathError if it escapes."""
        ...

    def read_index(self, key: str) -> Any:
        """The version's StoreIndex, or None for a version stored before blobs existed."""
        ...

    def blob_problems(self, key: str) -> list[str]:
        """What is wrong with the blobs a version references (missing, not linked)."""
        ...

    def remove(self, key: str) -> None: ...

    def collect_garbage(self, known_keys: Callable[[], set[str]]) -> list[str]:
        """Remove blobs no version in known_keys() references; return what was removed."""
        ...

    def recover(self, known_keys: Callable[[], set[str]]) -> list[str]:
        """Remove leftovers of killed registrations when none is in flight; return them."""
        ...

    def keys(self) -> Iterator[str]: ...
