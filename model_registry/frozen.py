"""The one verdict on a MoFE checkpoint's frozen claim: its expert FFNs equal the dense models
they came from. `mofe verify`, registration and `mofe registry verify` all call
`frozen_verdict`, so they state the same thing about the same checkpoint.

Per expert record in mofe.json, two comparisons against the checkpoint's canonical tensors:
  manifest: the record's per-tensor SHA-256s (taken from the source, converted to the
            checkpoint dtype, at merge time);
  source:   the source checkpoint, when it is reachable now (a local path, a registry ref, or
            the local Hugging Face cache; nothing is downloaded), hashed afresh after
            conversion to the dtype of each checkpoint tensor (checkpoint.convert_dtype: the
            round-to-nearest-even cast mergekit and torch apply). A bf16 checkpoint made from
            fp32 sources therefore matches its sources; an fp32 checkpoint does not match an
            fp16 copy of its source (the fp32 values cannot come from it).
Outcome:
  failed     any comparison differs (exit 1);
  passed     nothing differs; basis "sources": every expert matched its live source (exit 0);
             basis "manifest": at least one expert was checked against mofe.json's hashes
             only, so bit-identity to that source is not confirmed here (exit 3);
  unchecked  nothing could be compared (no hashes, no reachable source) (exit 4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .checkpoint import (
    CanonicalTensor,
    CheckpointError,
    canonical_expert_tensors,
    layout_of,
)
from .errors import InvalidCheckpointError, RegistryError
from .manifest import ExpertRecord, Manifest
from .stores import FrozenStatus

SHOWN_MISMATCHES = 5
EXIT_CODES = {("passed", "sources"): 0, ("failed", None): 1, ("passed", "manifest"): 3,
              ("unchecked", None): 4}
Locator = Callable[[ExpertRecord], "Path | str"]


@dataclass
class FrozenVerdict:
    status: FrozenStatus
    basis: Literal["sources", "manifest"] | None  # what a "passed" rests on
    experts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per difference found
    summary: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[(self.status, self.basis if self.status == "passed" else None)]

    def details(self) -> dict[str, Any]:
        return {"experts": self.experts, "summary": self.summary, "basis": self.basis,
                "problems": self.problems[:50]}


def manifest_consistency(manifest: Manifest, config: dict, where: Path) -> None:
    """The manifest must describe this checkpoint; a contradiction is bad input, not a warning."""
    pairs = [("num_experts", manifest.num_experts, "num_local_experts"),
             ("top_k", manifest.top_k, "num_experts_per_tok"),
             ("num_layers", manifest.num_layers, "num_hidden_layers")]
    for fld, value, cfg_field in pairs:
        if config.get(cfg_field) != value:
            raise InvalidCheckpointError(f"{where}: manifest field {fld} = {value} contradicts "
                                         f"config.json {cfg_field} = {config.get(cfg_field)}")
    for rec in manifest.experts:
        if rec.index >= manifest.num_experts:
            raise InvalidCheckpointError(f"{where}: expert record index {rec.index} is out of "
                                         f"range (num_experts = {manifest.num_experts})")


def compare(expected: dict[str, str], actual: dict[str, str]) -> dict[str, Any]:
    mismatched = sorted(k for k in expected if k in actual and expected[k] != actual[k])
    missing = sorted(k for k in expected if k not in actual)
    uncovered = sorted(k for k in actual if k not in expected)
    return {"compared": len(expected) - len(missing), "mismatched": mismatched[:SHOWN_MISMATCHES],
            "all_mismatched": mismatched, "n_mismatched": len(mismatched),
            "missing": missing[:SHOWN_MISMATCHES], "uncovered": len(uncovered),
            "ok": not mismatched and not missing}


def _source_hashes(path: Path, dtypes: dict[str, str]) -> dict[str, Any]:
    """Hashes of a dense source's FFN, each converted to the checkpoint tensor's dtype."""
    try:
        if layout_of(path) != "dense":
            return {"status": "skipped", "detail": f"{path}: not a dense Llama checkpoint"}
        tensors = list(canonical_expert_tensors(path))
        return {"status": "hashed",
                "hashes": {t.key: t.sha256(dtypes.get(t.key, t.dtype)) for t in tensors}}
    except (CheckpointError, OSError) as exc:
        return {"status": "skipped", "detail": f"{path}: cannot compare ({exc})"}


def frozen_verdict(manifest: Manifest, ckpt: Path, locate: Locator) -> FrozenVerdict:
    """locate(record) -> a local dense checkpoint, or the reason the source is out of reach."""
    by_expert: dict[int, list[CanonicalTensor]] = {}
    for t in canonical_expert_tensors(ckpt):
        by_expert.setdefault(t.expert, []).append(t)
    verdict = FrozenVerdict("unchecked", None)
    if len(by_expert) != manifest.num_experts:
        verdict.problems.append(f"checkpoint has {len(by_expert)} experts, mofe.json records "
                                f"{manifest.num_experts}")
    outcomes = []
    for rec in sorted(manifest.experts, key=lambda r: r.index):
        tensors = by_expert.get(rec.index, [])
        actual = {t.key: t.sha256() for t in tensors}
        entry: dict[str, Any] = {"index": rec.index, "domain": rec.domain, "source": rec.source,
                                 "registry_ref": rec.registry_ref}
        differs: dict[str, list[str]] = {}  # tensor key -> what it differs from
        if rec.sha256:
            entry["manifest"] = result = compare(rec.sha256, actual)
            for key in result["all_mismatched"] + result["missing"]:
                differs.setdefault(key, []).append("the hash mofe.json records")
        where = locate(rec)
        if isinstance(where, str):
            entry["source_check"] = {"status": "unreachable", "detail": where}
        else:
            got = _source_hashes(where, {t.key: t.dtype for t in tensors})
            if got["status"] == "hashed":
                result = compare(got.pop("hashes"), actual)
                got = {"status": "match" if result["ok"] else "mismatch", "path": str(where),
                       **result}
                for key in result["all_mismatched"] + result["missing"]:
                    differs.setdefault(key, []).append(f"its source {where}")
            entry["source_check"] = got
        for key in sorted(differs, key=_key_order):
            layer, _, proj = key.partition(".")
            what = ("is missing from the checkpoint" if key not in actual else
                    "checkpoint tensor differs from " + " and ".join(differs[key]))
            verdict.problems.append(f"expert {rec.index} ({rec.domain}) layer {layer} {proj}: "
                                    f"{what}")
        for part in (entry.get("manifest"), entry["source_check"]):
            if part:
                part.pop("all_mismatched", None)
        outcomes.append(_expert_outcome(entry))
        entry["outcome"] = outcomes[-1]
        verdict.experts.append(entry)
    if verdict.problems or "failed" in outcomes:
        verdict.status = "failed"
    elif outcomes and all(o == "source" for o in outcomes):
        verdict.status, verdict.basis = "passed", "sources"
    elif any(o in ("source", "manifest") for o in outcomes):
        verdict.status, verdict.basis = "passed", "manifest"
    verdict.summary = _summary(verdict, outcomes)
    return verdict


def _expert_outcome(entry: dict) -> str:
    manifest, source = entry.get("manifest"), entry["source_check"]
    if (manifest and not manifest["ok"]) or source["status"] == "mismatch":
        return "failed"
    if source["status"] == "match":
        return "source"
    return "manifest" if manifest else "unchecked"


def _summary(verdict: FrozenVerdict, outcomes: list[str]) -> str:
    if verdict.status == "failed":
        bad = [str(e["index"]) for e in verdict.experts if e["outcome"] == "failed"]
        head = (f"expert(s) {', '.join(bad)} differ from their recorded source tensors"
                if bad else verdict.problems[0])
        return head
    if verdict.status == "unchecked":
        return "no expert hashes in mofe.json and no reachable dense source: nothing compared"
    n_src, n_man, n_none = (outcomes.count(x) for x in ("source", "manifest", "unchecked"))
    if verdict.basis == "sources":
        return f"{n_src} expert(s) bit-identical to their sources"
    parts = [f"{n_src} expert(s) bit-identical to their sources"] if n_src else []
    if n_man:
        parts.append(f"{n_man} expert(s) match the hashes in mofe.json only (source not "
                     "reachable: bit-identity to the source is not confirmed)")
    if n_none:
        parts.append(f"{n_none} expert(s) not checked (no hashes, no reachable source)")
    return "; ".join(parts)


def _key_order(key: str) -> tuple[int, str]:
    layer, _, proj = key.partition(".")
    return (int(layer) if layer.isdigit() else 1 << 30, proj)


def locate_source(rec: ExpertRecord, relative_to: Path,
                  resolve: Callable[[str], Path] | None = None) -> Path | str:
    """A local directory holding the source of `rec`, or why there is none. Tries the
    registry ref, then the recorded path (absolute, or relative to the checkpoint and to the
    working directory), then a hub id in the local Hugging Face cache (never downloaded)."""
    reasons = []
    if rec.registry_ref and resolve is not None:
        try:
            return resolve(rec.registry_ref)
        except (RegistryError, LookupError, OSError, ValueError) as exc:
            reasons.append(f"registry ref {rec.registry_ref}: {exc}")
    p = Path(rec.source).expanduser()
    for cand in ([p] if p.is_absolute() else [relative_to / p, Path.cwd() / p]):
        if (cand / "config.json").is_file():
            return cand.resolve()
    if not p.is_absolute() and rec.source.count("/") == 1:
        cached = _hub_cache(rec.source, rec.revision)
        if cached is not None:
            return cached
        reasons.append(f"{rec.source}: not in the local Hugging Face cache (hub ids are not "
                       "fetched)")
    else:
        reasons.append(f"{rec.source}: no local checkpoint there")
    return "; ".join(reasons)


def _hub_cache(repo: str, revision: str | None) -> Path | None:
    try:
        import huggingface_hub

        return Path(huggingface_hub.snapshot_download(repo, revision=revision,
                                                      local_files_only=True))
    except Exception:  # not installed, not cached, malformed id: all "not reachable"
        return None
