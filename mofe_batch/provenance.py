"""What produced an output file, and one writer at a time.

`OUTPUT.provenance.json` records the settings every row of OUTPUT depends on (model content
hash, task, shots, prompt format, dtype, ...). It is written before the first row; a rerun
into the same OUTPUT must match it field by field, or it is refused with the differences
named, so one file never mixes results of two models or prompt formats.

`OUTPUT.lock` is held with `fcntl.flock` for the whole run: a second run on the same OUTPUT
is refused at once. The kernel drops the lock when the process dies, however it dies.

Torch-free: runs before a model is loaded, so a refused run costs no engine start.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from model_registry.checkpoint import atomic_write_text
from model_registry.inspection import file_sha256

from .prompts import FIRST_N, FIRST_N_TASKS

CACHE_ENV = "MOFE_CACHE_DIR"  # where file hashes are cached
PROVENANCE_SUFFIX = ".provenance.json"
LOCK_SUFFIX = ".lock"
# Files beside the weights that change what a checkpoint computes or how its prompts tokenize.
CONTENT_FILES = ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                 "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                 "chat_template.json", "mofe.json")
# Fields a resumed run must match. `model` (the ref as typed) is informational: the same
# content under another path or registry name may resume; it is compared only when the
# content hash is unknown (a hub id).
COMPARED = ("model_sha256", "task", "shots", "shot_sampler", "shot_seed", "dev_sha256",
            "template",
            "chat_template", "cop_base", "dtype", "backend", "max_model_len")


class OutputBusyError(RuntimeError):
    """Another run holds OUTPUT's lock."""


class ProvenanceMismatch(ValueError):
    """OUTPUT was produced with settings that differ from this run's."""


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def content_files(ckpt: Path) -> list[Path]:
    ckpt = Path(ckpt)
    files = sorted(ckpt.glob("*.safetensors")) + sorted(ckpt.glob("*.bin"))
    return files + [ckpt / n for n in CONTENT_FILES if (ckpt / n).is_file()]


def _digest(entries: list[tuple[str, str]]) -> str:
    """One hash over (file name, file SHA-256) pairs: the same whoever hashed the files."""
    return _sha256_text("".join(f"{name}\t{sha}\n" for name, sha in sorted(entries)))


def _cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("mofe-serve")


def _cached_file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, cached by (path, inode, size, mtime) so a resumed run does
    not re-read gigabytes of weights; rewriting a file changes its mtime and size/inode."""
    st = path.stat()
    key = _sha256_text(f"{path.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}")
    entry = _cache_dir() / "file-sha256" / key
    try:
        cached = entry.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    sha = file_sha256(path)
    try:
        atomic_write_text(entry, sha)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return sha


def model_content_sha256(ref: str, source: Path | None) -> tuple[str | None, str]:
    """(hash, how it was obtained) for the checkpoint a REF names; (None, why) for hub ids.

    A registered copy (`NAME@VERSION`, storage `copy`) uses the registry's per-file SHA-256
    from registration (the stored files never change); anything else hashes the files.
    The hash covers weights, config, tokenizer and chat template files, and mofe.json.
    """
    if source is None:
        return None, "hub id: content not hashed locally"
    names = {p.name for p in content_files(source)}
    from model_registry.refs import looks_like_path

    if not looks_like_path(ref) and not Path(ref).exists():  # NAME, NAME@VERSION, NAME@ALIAS
        try:
            from model_registry.registry import Registry

            with Registry(read_only=True) as registry:  # a lookup writes nothing
                info = registry.get(ref)
            if info.storage == "copy":
                entries = [(f.path, f.sha256) for f in info.files if f.path in names]
                if {name for name, _ in entries} == names:
                    return _digest(entries), f"registry {info.ref}"
        except Exception:  # noqa: BLE001 - fall back to hashing the files themselves
            pass
    return _digest([(p.name, _cached_file_sha256(p)) for p in content_files(source)]), "files"


def run_identity(cfg, model_ref: str, source: Path | None, backend: str,
                 cop_base: int | None) -> dict:
    """The settings every row of this run depends on (see COMPARED)."""
    sha, how = model_content_sha256(model_ref, source)
    template = "lm-eval default"
    if cfg.template is not None:
        from .prompts import template_source

        template = f"sha256:{_sha256_text(template_source(cfg.template))}"
    return {
        "model": model_ref, "model_sha256": sha, "model_hash_source": how,
        "task": cfg.task, "shots": cfg.shots,
        # None: seeded draws per question (recorded before the field existed)
        "shot_sampler": FIRST_N if cfg.shots and cfg.task in FIRST_N_TASKS else None,
        "shot_seed": cfg.seed if cfg.shots else None,  # only shots depend on the seed
        "dev_sha256": file_sha256(cfg.dev) if cfg.shots and cfg.dev else None,
        "template": template, "chat_template": cfg.chat_template, "cop_base": cop_base,
        "dtype": cfg.dtype, "backend": "endpoint" if cfg.endpoint else backend,
        "max_model_len": cfg.max_model_len,
    }


def provenance_path(output: Path) -> Path:
    return Path(str(output) + PROVENANCE_SUFFIX)


def differences(old: dict, new: dict) -> list[str]:
    keys = list(COMPARED)
    if old.get("model_sha256") is None or new.get("model_sha256") is None:
        keys.insert(0, "model")
    return [f"{k}: {old.get(k)!r} (in the output) vs {new.get(k)!r} (this run)"
            for k in keys if old.get(k) != new.get(k)]


def check_or_record(output: Path, has_rows: bool, identity: dict) -> None:
    """Refuse to resume into an OUTPUT produced with other settings; record ours otherwise.

    Call with the output lock held, before any row is written.
    """
    path = provenance_path(output)
    if has_rows:
        if not path.is_file():
            raise ProvenanceMismatch(
                f"{output} has results but no {path.name} saying what produced them "
                "(written by an older mofe batch?); refusing to add rows that may come from "
                "another model or prompt format. Use another --output, or move it away.")
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise ProvenanceMismatch(f"{path}: not valid JSON ({exc})") from None
        diff = differences(old, identity)
        if diff:
            raise ProvenanceMismatch(
                f"{output} was produced with different settings; refusing to mix results "
                "in one file:\n  " + "\n  ".join(diff) +
                "\nRerun with the original settings to resume, or use another --output.")
        return
    atomic_write_text(path, json.dumps(identity, indent=2) + "\n")


class OutputLock:
    """Exclusive, non-blocking `flock` on OUTPUT.lock for the lifetime of a run.

    The lock file is removed on release; acquire re-checks that the file it locked is still
    the one at the path (another run may have removed it between open and flock).
    """

    def __init__(self, output: Path):
        self.path = Path(str(output) + LOCK_SUFFIX)
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputBusyError(
                    f"another mofe batch run (pid {holder}) is writing "
                    f"{str(self.path)[:-len(LOCK_SUFFIX)]}; wait for it to finish or use "
                    f"another --output (lock: {self.path})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file another run had just removed: try again
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
