"""ArtifactStore on a local folder: <root>/artifacts/<name>/v<version>/, staging in <root>/tmp,
shared expert blobs in <root>/blobs (content-addressed; see cas.py). A version directory is
what `resolve` returns: its expert files are hard links to the blobs.

Crash safety: a registration stages into <root>/tmp (and adds missing blobs to <root>/blobs)
while holding a *shared* flock on <root>/.staging.lock, and renames into artifacts/ inside
the metadata transaction. `recover` takes the lock *exclusively* without waiting: if it gets
it, no registration is in flight on this host, so everything in tmp/, every artifact
directory without a row, and every blob no remaining version's index references is a
leftover and is removed. `delete` sweeps blobs the same way (when no registration is in
flight; else the next writer's open does). (flock is per host: on shared storage use one
writer host, or the fsspec store.)
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .cas import (
    BlobDir,
    StoreIndex,
    build_version,
    make_dirs,
    read_index,
    sweep_blobs,
    version_blob_problems,
)
from .errors import NotFoundError, RegistryError, UnsafePathError
from .refs import NAME_PATTERN
from .stores import FileEntry

_KEY = re.compile(rf"^({NAME_PATTERN})/v(\d+)$")


class FilesystemArtifactStore:
    def __init__(self, root: Path, create: bool = True):
        self.root = Path(root)
        self.artifacts = self.root / "artifacts"
        self.tmp = self.root / "tmp"
        self.lock_file = self.root / ".staging.lock"
        self.blobs = BlobDir(self.root / "blobs")
        # Lookups create nothing.
        for d in (self.artifacts, self.tmp, self.blobs.root) if create else ():
            make_dirs(d)

    @contextmanager
    def _lock(self, mode: int) -> Iterator[bool]:
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the flock

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """Yield a not-yet-existing path in a private work dir; create the checkpoint there."""
        with self._lock(fcntl.LOCK_SH):
            work = Path(tempfile.mkdtemp(prefix="stage-", dir=self.tmp))
            try:
                yield work / "ckpt"
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def stage(self, src: Path, staged: Path) -> StoreIndex:
        """Write `src` at `staged` as a content-addressed version (new blobs go straight into
        blobs/: a killed registration's are swept as unreferenced)."""
        return build_version(src, staged, self.blobs, staged.parent)

    def upload(self, staged: Path, index: StoreIndex) -> None:
        """Nothing to upload: staging is already in the store."""

    def publish(self, staged: Path, name: str, version: int) -> str:
        key = f"{name}/v{version}"
        dst = self._path(key)
        make_dirs(dst.parent)
        if dst.exists() or dst.is_symlink():
            # Only a killed registration can leave this: we hold the metadata write lock.
            self._remove_path(dst)
        os.rename(staged, dst)
        _fsync_dir(dst.parent)
        return key

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise UnsafePathError(f"artifact key {key!r} is not of the form <name>/v<version>")
        return self.artifacts / key

    def local_path(self, key: str, files: list[FileEntry] | None = None) -> Path:
        """The version directory itself (`files` is for remote stores)."""
        path = self._path(key)
        if path.is_symlink() or path.parent.is_symlink():
            raise UnsafePathError(f"{path} is a symbolic link; registry artifacts must be real "
                                  "directories inside the registry root")
        resolved = path.resolve()
        if not resolved.is_relative_to(self.artifacts.resolve()):
            raise UnsafePathError(f"{path} resolves to {resolved}, outside {self.artifacts}")
        if not resolved.is_dir():
            raise NotFoundError(f"artifact directory {path} is missing")
        return resolved

    def remove(self, key: str) -> None:
        self._remove_path(self._path(key))

    def read_index(self, key: str) -> StoreIndex | None:
        return read_index(self.local_path(key))

    def blob_problems(self, key: str) -> list[str]:
        path = self.local_path(key)
        index = read_index(path)
        return version_blob_problems(path, index, self.blobs) if index else []

    def blob_path(self, key: str) -> Path:
        return self.blobs.path(key)

    def collect_garbage(self, known_keys: Callable[[], set[str]]) -> list[str]:
        """Remove blobs no remaining version uses, unless a registration is in flight."""
        with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB) as got:
            return self._sweep_blobs(known_keys()) if got else []

    def _sweep_blobs(self, known: set[str]) -> list[str]:
        referenced: set[str] = set()
        for key in known:
            try:
                index = read_index(self._path(key))
            except (RegistryError, OSError):
                return []  # a live version's index is unreadable: delete nothing
            referenced |= index.blob_keys if index else set()
        # Belt and braces: a blob some directory still links (st_nlink > 1) is kept.
        return sweep_blobs(self.blobs, referenced, keep=lambda p: p.stat().st_nlink > 1)

    @staticmethod
    def _remove_path(path: Path) -> None:
        if path.is_symlink() or path.is_file():
            path.unlink()  # never follow a link out of the root
        elif path.exists():
            shutil.rmtree(path, ignore_errors=True)

    def keys(self) -> Iterator[str]:
        for d in sorted(self.artifacts.glob("*/v*")):
            key = f"{d.parent.name}/{d.name}"
            if _KEY.fullmatch(key):
                yield key

    def recover(self, known_keys: Callable[[], set[str]]) -> list[str]:
        removed: list[str] = []
        with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB) as got:
            if not got:
                return removed  # a registration is in flight: its tmp dir is live
            for entry in self.tmp.iterdir():
                self._remove_path(entry)
                removed.append(f"tmp/{entry.name}")
            known = known_keys()
            for key in self.keys():
                if key not in known:
                    self.remove(key)
                    removed.append(f"artifacts/{key}")
            removed += self._sweep_blobs(known)
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
