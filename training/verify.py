"""`mofe verify`: every expert FFN tensor must be bit-identical to its recorded source.

Three hash sets per expert, all of canonical tensors ("<layer>.<proj>" keys):
  recorded  - mofe.json, the source tensors after the cast to the checkpoint dtype
  checkpoint - re-hashed from the checkpoint's safetensors files now
  source    - re-hashed from the source model now (when its directory is reachable)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model_registry.checkpoint import expert_hashes
from model_registry.manifest import ExpertRecord, Manifest

from .hashing import compare_hashes, expert_hashes_as


@dataclass
class ExpertResult:
    index: int
    domain: str
    source: str
    tensors: dict[str, int] = field(default_factory=dict)  # proj -> tensors checked
    changed: list[str] = field(default_factory=list)  # keys differing checkpoint vs recorded
    source_changed: list[str] = field(default_factory=list)  # keys differing source vs recorded
    source_checked: bool = False
    note: str = ""


@dataclass
class VerifyResult:
    checkpoint: Path
    experts: list[ExpertResult]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _source_dir(rec: ExpertRecord) -> Path | None:
    """The source model directory if it is reachable without a network."""
    p = Path(rec.source)
    if p.is_dir():
        return p
    if p.is_absolute() or rec.source.count("/") != 1:
        return None
    try:  # a hub id: only the local cache counts (verify must work offline)
        import huggingface_hub

        return Path(huggingface_hub.snapshot_download(rec.source, revision=rec.revision,
                                                      local_files_only=True))
    except Exception:
        return None


def verify_checkpoint(ckpt: Path, check_sources: bool = True) -> VerifyResult:
    ckpt = Path(ckpt)
    manifest = Manifest.load(ckpt)
    actual = expert_hashes(ckpt)
    results, problems = [], []
    if len(actual) != manifest.num_experts:
        problems.append(f"checkpoint has {len(actual)} experts, manifest records "
                        f"{manifest.num_experts}")
    for rec in sorted(manifest.experts, key=lambda r: r.index):
        res = ExpertResult(rec.index, rec.domain, rec.source)
        got = actual.get(rec.index, {})
        for key in rec.sha256:
            proj = key.partition(".")[2]
            res.tensors[proj] = res.tensors.get(proj, 0) + 1
        if not rec.sha256:
            problems.append(f"expert {rec.index} ({rec.domain}): manifest records no hashes")
        res.changed = compare_hashes(rec.sha256, got)
        for key in res.changed:
            layer, _, proj = key.partition(".")
            problems.append(f"expert {rec.index} ({rec.domain}) layer {layer} {proj}: checkpoint "
                            f"tensor differs from its source ({_short(got.get(key))} != "
                            f"{_short(rec.sha256.get(key))})")
        if check_sources:
            src = _source_dir(rec)
            if src is None:
                res.note = "source not reachable; checked against mofe.json only"
            else:
                res.source_checked = True
                now = expert_hashes_as(src, manifest.dtype).get(0, {})
                res.source_changed = compare_hashes(rec.sha256, now)
                for key in res.source_changed:
                    layer, _, proj = key.partition(".")
                    problems.append(f"expert {rec.index} ({rec.domain}) layer {layer} {proj}: "
                                    f"source {src} no longer matches mofe.json")
        results.append(res)
    return VerifyResult(ckpt, results, problems)


def _short(h: str | None) -> str:
    return h[:12] if h else "missing"


def render_table(result: VerifyResult):
    from rich.table import Table

    table = Table(title=f"Expert FFN verification: {result.checkpoint}")
    for col in ("expert", "domain", "proj", "tensors", "checkpoint", "source"):
        table.add_column(col)
    for res in result.experts:
        for proj in sorted(res.tensors):
            changed = [k for k in res.changed if k.endswith(f".{proj}")]
            src_changed = [k for k in res.source_changed if k.endswith(f".{proj}")]
            ck = "[green]identical[/]" if not changed else f"[red]{len(changed)} changed[/]"
            if not res.source_checked:
                sc = "[yellow]not reachable[/]"
            else:
                sc = ("[green]matches[/]" if not src_changed
                      else f"[red]{len(src_changed)} differ[/]")
            table.add_row(str(res.index), res.domain, proj, str(res.tensors[proj]), ck, sc)
    return table
