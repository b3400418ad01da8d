"""`mofe registry verify`: re-hash a registered version's files and expert tensors against
what was recorded, and state the frozen claim again with the one verdict (frozen.py) that
registration and `mofe verify` use."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from .checkpoint import CheckpointError, expert_hashes
from .errors import RegistryError
from .frozen import frozen_verdict, locate_source
from .inspection import file_sha256
from .manifest import Manifest
from .registry import Registry

SHOWN = 20


class VerifyReport(BaseModel):
    ref: str
    path: str | None
    files_checked: int = 0
    tensors_checked: int = 0
    problems: list[str] = Field(default_factory=list)  # integrity: files and tensors
    frozen_check: str = "unchecked"  # passed | failed | unchecked, as at registration
    frozen_basis: str | None = None  # sources | manifest (what a pass rests on)
    frozen_summary: str = "no mofe.json"
    frozen_exit_code: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and self.frozen_check != "failed"

    @property
    def exit_code(self) -> int:
        """1: a file, tensor or the frozen claim is wrong; 3: intact, but the frozen claim
        rests on mofe.json's hashes only (a source is not reachable); else 0."""
        if not self.ok:
            return 1
        return 3 if self.frozen_exit_code == 3 else 0


def verify(registry: Registry, ref: str) -> VerifyReport:
    info = registry.get(ref)
    report = VerifyReport(ref=info.ref, path=None)
    try:
        path = registry.path_of(info)
    except RegistryError as exc:
        report.problems.append(str(exc))
        return report
    report.path = str(path)
    if info.storage == "copy":  # the shared blobs this version's expert files are
        try:
            report.problems += registry.artifacts.blob_problems(info.artifact)
        except RegistryError as exc:
            report.problems.append(str(exc))
    recorded = {f.path: f for f in info.files}
    on_disk = _walk(path, report, follow_links=info.storage == "link")
    for rel in sorted(set(on_disk) - set(recorded)):
        report.problems.append(f"{rel}: file not recorded at registration")
    for rel, entry in recorded.items():
        file = path / rel
        if rel not in on_disk:
            report.problems.append(f"{rel}: missing")
            continue
        size = file.stat().st_size
        digest = file_sha256(file)
        report.files_checked += 1
        if size != entry.size or digest != entry.sha256:
            report.problems.append(f"{rel}: sha256 {digest[:12]}… (size {size}) differs from "
                                   f"recorded {entry.sha256[:12]}… (size {entry.size})")
    try:
        actual = expert_hashes(path)
    except (CheckpointError, OSError) as exc:
        report.problems.append(f"expert tensors unreadable: {exc}")
        return report
    expected = registry.meta.expert_hashes(info.name, info.version)
    for expert, keys in sorted(expected.items()):
        for key, sha in sorted(keys.items()):
            report.tensors_checked += 1
            now = actual.get(expert, {}).get(key)
            if now != sha:
                report.problems.append(f"expert {expert} tensor {key}: "
                                       + ("missing" if now is None else "hash differs"))
    extra = {(e, k) for e, ks in actual.items() for k in ks} - \
        {(e, k) for e, ks in expected.items() for k in ks}
    for e, k in sorted(extra)[:SHOWN]:
        report.problems.append(f"expert {e} tensor {k}: not recorded at registration")
    _frozen(registry, info, path, report)
    return report


def _frozen(registry: Registry, info, path: Path, report: VerifyReport) -> None:
    """The frozen verdict on the stored bytes, locating sources as registration did."""
    if info.kind == "llama":
        report.frozen_summary = "dense model: no frozen experts to check"
        return
    if info.manifest is None:
        return
    manifest = Manifest.model_validate(info.manifest)
    src = Path(info.source_path)
    verdict = frozen_verdict(manifest, path,
                             lambda rec: locate_source(rec, src, registry.resolve))
    report.frozen_check, report.frozen_basis = verdict.status, verdict.basis
    report.frozen_summary, report.frozen_exit_code = verdict.summary, verdict.exit_code


def _walk(path: Path, report: VerifyReport, follow_links: bool) -> set[str]:
    """Relative paths of regular files; a copied artifact must contain no symbolic links."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink() and not follow_links:
                report.problems.append(f"{p.relative_to(path)}: symbolic link inside a copied "
                                       "artifact (points to {})".format(os.readlink(p)))
        for name in filenames:
            p = Path(dirpath) / name
            if follow_links or not p.is_symlink():
                found.add(p.relative_to(path).as_posix())
    return found
