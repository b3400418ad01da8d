"""ArtifactStore over fsspec: blobs and versions under one URL (``s3://bucket/prefix`` through
s3fs, ``file:///shared/registry`` on a shared filesystem, any fsspec URL), read through a
local cache on each node.

Under the URL:
  blobs/<h[:2]>/<h>/<file>.safetensors   expert tensor blobs (cas.py), written once, whole
  versions/<name>/v<N>/...               a version's own files (its expert shards are blobs)
  staging/<token>.json                   a registration's marker: the blobs it uses (first)
  staging/<token>/...                    its own files until the metadata row is committed
In the cache (cache_dir/<first 16 hex of sha256(URL)>/):
  blobs/<key>            blobs this node registered or downloaded (each checked)
  files/<h[:2]>/<h>      own files downloaded, by content SHA-256 (each checked)
  versions/<name>/v<N>   the directories `resolve` returns: hard links into blobs/, files/
  tmp/                   registrations and downloads in progress (same filesystem: links)
So a node downloads each shared expert blob once, however many versions use it, and every
downloaded byte is checked against the SHA-256 the metadata row recorded.

Publishing: upload (marker, missing blobs, own files under staging/) outside the metadata
transaction; inside it, copy staging/<token>/ to versions/<name>/v<N>/ (server-side on S3);
the row commit makes the version visible. After the commit the registration checks that
its blobs still exist (re-uploading any a concurrent garbage collection removed) and
removes its staging keys.

Garbage: a blob is removed when no committed version's index references it, no staging
marker names it, and it is older than `grace_s` (default one hour: a registration that
checked an existing blob is given that long to commit). `recover` also removes staging
keys and row-less version prefixes older than `grace_s` (killed registrations).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath

from .cas import (
    BLOB_MODE,
    FILE_MODE,
    STORE_INDEX,
    BlobDir,
    StoreIndex,
    build_version,
    check_blob_key,
    link,
    make_dirs,
    parse_index,
)
from .errors import NotFoundError, RegistryError, UnsafePathError
from .inspection import file_sha256
from .refs import NAME_PATTERN
from .stores import FileEntry

_KEY = re.compile(rf"^({NAME_PATTERN})/v(\d+)$")
GRACE_S = 3600.0


class FsspecArtifactStore:
    def __init__(self, url: str, cache_dir: Path | str, storage_options: dict | None = None,
                 grace_s: float = GRACE_S):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, base = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.base = base.rstrip("/")
        self.cache = Path(cache_dir).expanduser().absolute() / \
            hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.blobs = BlobDir(self.cache / "blobs")
        self.tmp = self.cache / "tmp"
        self.grace_s = grace_s
        self.downloads: list[str] = []  # remote paths this process fetched (for tests/bench)
        self._pending: dict[Path, tuple[str, StoreIndex, list[str]]] = {}
        self._published: set[Path] = set()

    def _r(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _local(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else \
            (self.fs.protocol,)
        return "file" in protocols or "local" in protocols

    # ---- registration -----------------------------------------------------------------
    @contextmanager
    def staging(self) -> Iterator[Path]:
        make_dirs(self.tmp)
        work = Path(tempfile.mkdtemp(prefix="stage-", dir=self.tmp))
        staged = work / "ckpt"
        try:
            yield staged
        finally:
            pending = self._pending.pop(staged, None)
            if pending:
                token, index, _ = pending
                if staged in self._published:
                    self._published.discard(staged)
                    self._ensure_blobs(index)
                self._rm(self._r("staging", token), recursive=True)
                self._rm(self._r("staging", f"{token}.json"))
            shutil.rmtree(work, ignore_errors=True)

    def stage(self, src: Path, staged: Path) -> StoreIndex:
        return build_version(src, staged, self.blobs, staged.parent)

    def upload(self, staged: Path, index: StoreIndex) -> None:
        token = uuid.uuid4().hex
        marker = json.dumps({"blobs": sorted(index.blob_keys), "created": time.time()})
        self._put_bytes(marker.encode(), self._r("staging", f"{token}.json"))  # first: GC
        self._pending[staged] = (token, index, [])  # reads it before judging any blob
        self.fs.invalidate_cache()
        for ref in index.blobs.values():
            remote = self._r("blobs", ref.blob)
            if not self.fs.exists(remote):
                self._put(self.blobs.path(ref.blob), remote)
        own = _own_files(staged, index)
        for rel in own:
            self._put(staged / rel, self._r("staging", token, rel))
        self._pending[staged] = (token, index, own)

    def publish(self, staged: Path, name: str, version: int) -> str:
        token, _, own = self._pending[staged]
        key = _check_key(f"{name}/v{version}")
        dst = self._r("versions", key)
        if self.fs.exists(dst):  # only a killed registration leaves this: rows own the number
            self._rm(dst, recursive=True)
        for rel in own:  # server-side copies on S3
            if self._local():
                self.fs.makedirs(f"{dst}/{rel}".rsplit("/", 1)[0], exist_ok=True)
            self.fs.copy(self._r("staging", token, rel), f"{dst}/{rel}")
        self._published.add(staged)
        return key

    def _ensure_blobs(self, index: StoreIndex) -> None:
        """After the commit: every blob the new version uses exists (re-upload any that a
        concurrent garbage collection removed in the meantime)."""
        self.fs.invalidate_cache()
        for ref in index.blobs.values():
            remote = self._r("blobs", ref.blob)
            if not self.fs.exists(remote) and self.blobs.has(ref.blob):
                self._put(self.blobs.path(ref.blob), remote)

    # ---- reading ------------------------------------------------------------------------
    def local_path(self, key: str, files: list[FileEntry] | None = None) -> Path:
        """The version as a local directory of hard links into the verified cache."""
        dst = self.cache / "versions" / _check_key(key)
        if dst.is_dir():
            return dst
        if not files:
            raise NotFoundError(f"{key}: no file list to fetch it by (an fsspec store "
                                "downloads what the metadata rows record)")
        by_path = {f.path: f for f in files}
        if STORE_INDEX not in by_path:
            raise RegistryError(f"{key}: recorded without {STORE_INDEX}; not a version of "
                                "this store")
        remote = self._r("versions", key)
        index = parse_index(self._content(by_path[STORE_INDEX], remote).read_bytes(),
                            f"{self.url}/versions/{key}/{STORE_INDEX}")
        make_dirs(self.tmp)
        work = Path(tempfile.mkdtemp(prefix="fetch-", dir=self.tmp))
        try:
            out = work / "v"
            out.mkdir(mode=0o755)
            out.chmod(0o755)
            for f in files:
                target = out / _safe_relative(f.path, key)
                make_dirs(target.parent)
                ref = index.blobs.get(f.path)
                src = self._blob(ref.blob, f) if ref else self._content(f, remote)
                link(src, target)
            make_dirs(dst.parent)
            try:
                os.rename(out, dst)
            except OSError:
                if not dst.is_dir():  # else another process built it first: same bytes
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return dst

    def _blob(self, key: str, entry: FileEntry) -> Path:
        cached = self.blobs.path(key)
        if cached.is_file() and cached.stat().st_size == entry.size:
            return cached  # checked when it was written or downloaded
        make_dirs(self.tmp)
        return self.blobs.put(key, lambda p: self._download(self._r("blobs", key), p, entry),
                              self.tmp)

    def _content(self, entry: FileEntry, remote_dir: str) -> Path:
        path = self.cache / "files" / entry.sha256[:2] / entry.sha256
        if path.is_file():
            return path
        make_dirs(self.tmp)
        fd, tmp = tempfile.mkstemp(prefix=".file-", dir=self.tmp)
        os.close(fd)
        try:
            self._download(f"{remote_dir}/{entry.path}", Path(tmp), entry)
            os.chmod(tmp, FILE_MODE)
            make_dirs(path.parent)
            try:
                link(Path(tmp), path)
            except FileExistsError:
                pass
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def _download(self, remote: str, local: Path, entry: FileEntry) -> None:
        try:
            self.fs.get_file(remote, str(local))
        except FileNotFoundError:
            raise NotFoundError(f"{self.url}: {remote} is missing from the artifact store") \
                from None
        self.downloads.append(remote)
        digest = file_sha256(local)
        if digest != entry.sha256 or local.stat().st_size != entry.size:
            raise RegistryError(f"{remote}: downloaded sha256 {digest[:12]}… (size "
                                f"{local.stat().st_size}) differs from the recorded "
                                f"{entry.sha256[:12]}… (size {entry.size}) of {entry.path}")

    def read_index(self, key: str) -> StoreIndex | None:
        local = self.cache / "versions" / _check_key(key) / STORE_INDEX
        if local.is_file():
            return parse_index(local.read_bytes(), local)
        path = self._r("versions", key, STORE_INDEX)
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        return parse_index(raw, f"{self.url}/versions/{key}/{STORE_INDEX}")

    def blob_problems(self, key: str) -> list[str]:
        index = self.read_index(key)
        if index is None:
            return [f"{key}: no {STORE_INDEX} in the artifact store"]
        self.fs.invalidate_cache()
        local = self.cache / "versions" / key
        out = []
        for fname, ref in sorted(index.blobs.items()):
            if not self.fs.exists(self._r("blobs", ref.blob)):
                out.append(f"{fname}: blob {ref.blob} is missing from {self.url}")
            cached = self.blobs.path(ref.blob)
            if (local / fname).is_file() and (not cached.is_file() or
                                              not os.path.samefile(cached, local / fname)):
                out.append(f"{fname}: not a link to cached blob {ref.blob}")
        return out

    def keys(self) -> Iterator[str]:
        self.fs.invalidate_cache()
        for path in sorted(self.fs.glob(self._r("versions", "*", "v*"))):
            key = "/".join(path.rstrip("/").split("/")[-2:])
            if _KEY.fullmatch(key):
                yield key

    def remove(self, key: str) -> None:
        self._rm(self._r("versions", _check_key(key)), recursive=True)
        shutil.rmtree(self.cache / "versions" / key, ignore_errors=True)

    # ---- garbage --------------------------------------------------------------------------
    def collect_garbage(self, known_keys: Callable[[], set[str]]) -> list[str]:
        self.fs.invalidate_cache()
        protected: set[str] = set()  # markers first: a registration that starts later
        for marker in self.fs.glob(self._r("staging", "*.json")):  # commits after our read
            try:
                protected |= set(json.loads(self.fs.cat_file(marker))["blobs"])
            except (FileNotFoundError, ValueError, KeyError):
                continue
        referenced: set[str] = set()
        for key in known_keys():
            try:
                index = self.read_index(key)
            except (RegistryError, OSError):
                return []  # a live version's index is unreadable: delete nothing
            referenced |= index.blob_keys if index else set()
        removed = []
        for path in self.fs.glob(self._r("blobs", "??", "*", "*.safetensors")):
            key = path[len(self._r("blobs")) + 1:]
            try:
                check_blob_key(key)
            except UnsafePathError:
                continue
            if key in referenced or key in protected or self._age(path) < self.grace_s:
                continue
            self._rm(path)
            removed.append(f"blobs/{key}")
        return removed

    def recover(self, known_keys: Callable[[], set[str]]) -> list[str]:
        removed = []
        self.fs.invalidate_cache()
        for path in self.fs.glob(self._r("staging", "*")):
            if self._age(path) >= self.grace_s:
                self._rm(path, recursive=True)
                removed.append("staging/" + path.rstrip("/").rsplit("/", 1)[-1])
        known = known_keys()
        for key in self.keys():
            if key not in known and self._age(self._r("versions", key)) >= self.grace_s:
                self.remove(key)
                removed.append(f"versions/{key}")
        if self.tmp.is_dir():
            for entry in self.tmp.iterdir():
                if time.time() - entry.lstat().st_mtime >= self.grace_s:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else \
                        entry.unlink(missing_ok=True)
        return removed + self.collect_garbage(lambda: known)

    # ---- fsspec helpers ---------------------------------------------------------------------
    def _age(self, path: str) -> float:
        """Seconds since the newest file at or under `path` was written."""
        try:
            infos = [self.fs.info(path)]
            if infos[0]["type"] == "directory":
                infos = list(self.fs.find(path, detail=True).values()) or infos
        except FileNotFoundError:
            return float("inf")
        newest = 0.0
        for info in infos:
            stamp = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
            if isinstance(stamp, datetime):
                stamp = stamp.timestamp()
            newest = max(newest, float(stamp))
        return time.time() - newest if newest else float("inf")

    def _put(self, local: Path, remote: str) -> None:
        """Upload so that the object appears whole: an S3 PUT is atomic; a filesystem gets a
        temporary name and a rename."""
        if not self._local():
            self.fs.put_file(str(local), remote)
            return
        part = f"{remote}.part-{uuid.uuid4().hex}"
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), part)
        self.fs.mv(part, remote)
        mode = BLOB_MODE if "/blobs/" in remote else FILE_MODE
        os.chmod(remote, mode)

    def _put_bytes(self, data: bytes, remote: str) -> None:
        if self._local():
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(remote, data)

    def _rm(self, path: str, recursive: bool = False) -> None:
        try:
            self.fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass


def _own_files(staged: Path, index: StoreIndex) -> list[str]:
    """Files of a staged version that are not expert blobs ('/'-separated, sorted)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(staged):
        dirnames.sort()
        for fn in sorted(filenames):
            rel = (Path(dirpath) / fn).relative_to(staged).as_posix()
            if rel not in index.blobs:
                out.append(rel)
    return out


def _safe_relative(path: str, key: str) -> str:
    """A recorded file path must stay inside the version directory."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path:
        raise UnsafePathError(f"{key}: recorded file path {path!r} leaves the version directory")
    return path


def _check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise UnsafePathError(f"artifact key {key!r} is not of the form <name>/v<version>")
    return key
