"""ArtifactStore on a local folder: <root>/artifacts/<name>/v<version>/, staging in <root>/tmp.

Crash safety: a registration stages into <root>/tmp while holding a *shared* flock on
<root>/.staging.lock and renames into artifacts/ inside the metadata transaction. `recover`
takes the lock *exclusively* without waiting: if it gets it, no registration is in flight on
this host, so everything in tmp/ and every artifact directory without a row is a leftover of
a killed process and is removed. (flock is per host: on shared storage use one writer host.)
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

from .errors import NotFoundError, UnsafePathError
from .refs import NAME_PATTERN

_KEY = re.compile(rf"^({NAME_PATTERN})/v(\d+)$")


class FilesystemArtifactStore:
    def __init__(self, root: Path, create: bool = True):
        self.root = Path(root)
        self.artifacts = self.root / "artifacts"
        self.tmp = self.root / "tmp"
        self.lock_file = self.root / ".staging.lock"
        for d in (self.artifacts, self.tmp) if create else ():  # lookups create nothing
            d.mkdir(parents=True, exist_ok=True)

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

    def publish(self, staged: Path, name: str, version: int) -> str:
        key = f"{name}/v{version}"
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
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

    def local_path(self, key: str) -> Path:
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
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
