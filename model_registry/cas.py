"""Content-addressed version directories: frozen expert tensors stored once, as shared blobs.

A stored version is a sharded safetensors checkpoint in the per-expert layout (dense models
keep theirs) that transformers and vLLM load as it is:
  model-own.safetensors          the version's own tensors: embeddings, attention, norms,
                                 routers, lm_head (whatever is not an expert FFN tensor)
  <expert tensor>.safetensors    one file per expert FFN tensor (layer, expert, w1|w2|w3),
                                 a HARD LINK to a blob: never a second copy
  model.safetensors.index.json   tensor name -> file, as transformers and vLLM expect
  mofe-store.json                the artifact index: which file is which blob (+ own tensor
                                 hashes, for `family`); garbage collection reads only these
  config.json, tokenizer, mofe.json, ...   copied as given
A blob is a one-tensor safetensors file keyed `<h[:2]>/<h>/<file name>`, h the tensor's
canonical hash (checkpoint.tensor_sha256: dtype, shape and bytes). The file name is part of
the key because a safetensors header names its tensor: one tensor at two positions (another
layer or expert index) is two blobs. Registration streams: each tensor is hashed and written
on its own (memory: one tensor), own tensors are serialized from read-only maps.

Modes: files 0644, blobs 0444 (shared: a write through one version's directory would change
every version), directories 0755, whatever the source's modes were.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from .checkpoint import (
    WEIGHTS_INDEX,
    StorePiece,
    expert_file_name,
    store_pieces,
    write_pieces,
    write_weights_index,
)
from .errors import InvalidCheckpointError, RegistryError, UnsafePathError

STORE_INDEX = "mofe-store.json"
OWN_WEIGHTS = "model-own.safetensors"
FILE_MODE, BLOB_MODE, DIR_MODE = 0o644, 0o444, 0o755
_BLOB_KEY = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{64})/([A-Za-z0-9][A-Za-z0-9._-]*\.safetensors)$")
FICLONE = 0x40049409  # linux/fs.h: share a file's extents (btrfs, xfs) when links are refused


class BlobRef(BaseModel):
    blob: str  # key in the blob store
    sha256: str  # canonical tensor hash (the expert_tensors row)
    expert: int
    key: str  # "<layer>.<proj>"
    size: int  # bytes of the blob file


class StoreIndex(BaseModel):
    """mofe-store.json: what a stored version is made of."""

    format: int = 1
    blobs: dict[str, BlobRef] = Field(default_factory=dict)  # file in the version dir -> blob
    own_tensors: dict[str, str] = Field(default_factory=dict)  # tensor name -> canonical hash

    @property
    def blob_keys(self) -> set[str]:
        return {b.blob for b in self.blobs.values()}


def blob_key(sha256: str, file_name: str) -> str:
    return check_blob_key(f"{sha256[:2]}/{sha256}/{file_name}")


def check_blob_key(key: str) -> str:
    if not _BLOB_KEY.fullmatch(key) or key[:2] != key[3:5]:
        raise UnsafePathError(f"blob key {key!r} is not of the form <h[:2]>/<sha256>/<file>")
    return key


def read_index(version_dir: Path) -> StoreIndex | None:
    """The version's artifact index; None for a version stored before blobs existed."""
    path = Path(version_dir) / STORE_INDEX
    if not path.is_file():
        return None
    return parse_index(path.read_bytes(), path)


def parse_index(raw: bytes, where: object) -> StoreIndex:
    try:
        index = StoreIndex.model_validate_json(raw)
    except ValidationError as exc:
        raise RegistryError(f"{where}: unreadable artifact index ({exc.errors()[0]['msg']})") \
            from None
    for ref in index.blobs.values():
        check_blob_key(ref.blob)
    return index


# ---- a local directory of blobs: the local store's, or a node's download cache ---------
class BlobDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / check_blob_key(key)

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, write: Callable[[Path], None], tmp_dir: Path) -> Path:
        """The blob `key`, written by `write(path)` unless present. Written to a temporary
        file on the same filesystem and linked into place, so a blob appears whole or not
        at all, and two writers of one blob both end up with the same file."""
        final = self.path(key)
        if final.is_file():
            return final
        fd, tmp = tempfile.mkstemp(prefix=".blob-", dir=tmp_dir)
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, BLOB_MODE)
            make_dirs(final.parent)
            try:
                link(Path(tmp), final)
            except FileExistsError:
                pass  # another registration wrote the same tensor first: same bytes
        finally:
            Path(tmp).unlink(missing_ok=True)
        return final

    def keys(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for f in sorted(self.root.glob("??/*/*.safetensors")):
            key = f.relative_to(self.root).as_posix()
            if _BLOB_KEY.fullmatch(key):
                yield key

    def remove(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        for d in (path.parent, path.parent.parent):
            try:
                d.rmdir()  # only when empty
            except OSError:
                break


def make_dirs(path: Path) -> None:
    """mkdir -p, with mode 0755 for every directory it creates (whatever the umask)."""
    path = Path(path)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        d.chmod(DIR_MODE)


def link(src: Path, dst: Path) -> None:
    """Hard-link `src` at `dst`; where the filesystem refuses hard links, share its extents
    (reflink). Never a second copy: a different filesystem is a clear error."""
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise RegistryError(
                f"cannot hard-link {src} at {dst}: they are on different filesystems. The "
                "registry's blobs, tmp/ and artifacts/ (and a download cache's folders) must "
                "share one filesystem; a copy would store the experts twice") from None
        first = exc
    try:
        with open(src, "rb") as s, open(dst, "xb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    except OSError:
        Path(dst).unlink(missing_ok=True)
        raise RegistryError(f"cannot hard-link {src} at {dst} ({first.strerror}) and the "
                            "filesystem does not support reflinks either; put the registry "
                            "on a filesystem with hard links (ext4, xfs, btrfs, NFS)") from None


def copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)  # content only: the source's mode (e.g. 0600) is not kept
    os.chmod(dst, FILE_MODE)


# ---- building a version directory --------------------------------------------------------
def build_version(src: Path, dst: Path, blobs: BlobDir, tmp_dir: Path) -> StoreIndex:
    """Write checkpoint `src` (either layout) to the new directory `dst` as a
    content-addressed version whose expert files are links to blobs in `blobs` (written
    there when missing; `tmp_dir` is on the same filesystem)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir()
    dst.chmod(DIR_MODE)
    _copy_other_files(src, dst)
    pieces = store_pieces(src)
    own = [p for p in pieces if p.expert is None]
    if own:
        write_pieces(own, dst / OWN_WEIGHTS)
    index = StoreIndex(own_tensors={p.name: p.sha256() for p in own})
    for p in pieces:
        if p.expert is None:
            continue
        fname, sha = expert_file_name(p), p.sha256()  # reads this one tensor
        key = blob_key(sha, fname)
        path = blobs.put(key, _writer(p), tmp_dir)
        link(path, dst / fname)
        index.blobs[fname] = BlobRef(blob=key, sha256=sha, expert=p.expert[1], key=p.key,
                                     size=path.stat().st_size)
    write_weights_index(dst)
    (dst / STORE_INDEX).write_text(index.model_dump_json(indent=1))
    (dst / STORE_INDEX).chmod(FILE_MODE)
    return index


def _writer(piece: StorePiece) -> Callable[[Path], None]:
    return lambda path: write_pieces([piece], path)


def _copy_other_files(src: Path, dst: Path) -> None:
    """Everything but the weights and the indices we write, link targets not links."""
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        rel = Path(dirpath).relative_to(src)
        dirnames.sort()
        for d in dirnames:
            (dst / rel / d).mkdir()
            (dst / rel / d).chmod(DIR_MODE)
        for fn in sorted(filenames):
            if rel == Path(".") and (fn.endswith(".safetensors") or
                                     fn in (WEIGHTS_INDEX, STORE_INDEX)):
                continue
            copy_file(Path(dirpath) / fn, dst / rel / fn)


def check_staged_hashes(index: StoreIndex, stored: dict[int, dict[str, str]]) -> None:
    """The expert tensors as stored (read back through the links) must be the source's:
    a damaged blob already in the store is refused, not spread to a new version."""
    for fname, ref in index.blobs.items():
        got = stored.get(ref.expert, {}).get(ref.key)
        if got != ref.sha256:
            raise InvalidCheckpointError(
                f"blob {ref.blob} (linked as {fname}) does not hold the tensor its key names; "
                "the blob store is damaged: run `mofe registry verify` on the versions using it")


def version_blob_problems(version_dir: Path, index: StoreIndex, blobs: BlobDir) -> list[str]:
    """Each expert file must be the very blob its index names (one inode), and that blob
    must still be in the store."""
    out = []
    for fname, ref in sorted(index.blobs.items()):
        blob = blobs.path(ref.blob)
        if not blob.is_file():
            out.append(f"{fname}: blob {ref.blob} is missing from the store")
        elif (version_dir / fname).is_file() and not os.path.samefile(blob, version_dir / fname):
            out.append(f"{fname}: not a link to blob {ref.blob} (a separate copy)")
    return out


def sweep_blobs(blobs: BlobDir, referenced: set[str], keep: Callable[[Path], bool]) -> list[str]:
    """Remove every blob no live version's index references (and `keep` does not protect)."""
    removed = []
    for key in list(blobs.keys()):
        if key not in referenced and not keep(blobs.path(key)):
            blobs.remove(key)
            removed.append(f"blobs/{key}")
    return removed
