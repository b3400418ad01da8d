"""Re-hash a registered version's files and expert tensors against what was recorded."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from .checkpoint import CheckpointError, expert_hashes
from .errors import RegistryError
from .inspection import file_sha256
from .registry import Registry

SHOWN = 20


class VerifyReport(BaseModel):
    ref: str
    path: str | None
    files_checked: int = 0
    tensors_checked: int = 0
    problems: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(registry: Registry, ref: str) -> VerifyReport:
    info = registry.get(ref)
    report = VerifyReport(ref=info.ref, path=None)
    try:
        path = registry.path_of(info)
    except RegistryError as exc:
        report.problems.append(str(exc))
        return report
    report.path = str(path)
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
    return report


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
