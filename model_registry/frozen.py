"""Check a MoFE checkpoint's frozen claim: its expert FFNs equal the dense models they came from.

Two independent checks per expert record in mofe.json:
  manifest: the record's per-tensor SHA-256s (taken from the source at merge time) against the
            checkpoint's canonical expert tensors;
  source:   when the source checkpoint is reachable now (local path or registry ref) and is a
            dense Llama in the same dtype, its FFN (canonical expert 0) hashed afresh.
Any mismatch fails the check; nothing compared leaves it unchecked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import (
    CheckpointError,
    canonical_expert_tensors,
    detect_layout,
    read_all_headers,
)
from .errors import InvalidCheckpointError
from .manifest import ExpertRecord, Manifest
from .stores import FrozenStatus

SHOWN_MISMATCHES = 5


def manifest_consistency(manifest: Manifest, config: dict, where: Path) -> None:
    """The manifest must describe this checkpoint; a contradiction is bad input, not a warning."""
    pairs = [("num_experts", manifest.num_experts, "num_local_experts"),
             ("top_k", manifest.top_k, "num_experts_per_tok"),
             ("num_layers", manifest.num_layers, "num_hidden_layers")]
    for field, value, cfg_field in pairs:
        if config.get(cfg_field) != value:
            raise InvalidCheckpointError(f"{where}: manifest field {field} = {value} contradicts "
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
            "n_mismatched": len(mismatched), "missing": missing[:SHOWN_MISMATCHES],
            "uncovered": len(uncovered),
            "ok": not mismatched and not missing}


def _dense_hashes(path: Path, dtype: str) -> dict[str, Any]:
    try:
        if detect_layout(read_all_headers(path)) != "dense":
            return {"status": "skipped", "detail": f"{path}: not a dense Llama checkpoint"}
        tensors = list(canonical_expert_tensors(path))
    except (CheckpointError, OSError) as exc:
        return {"status": "skipped", "detail": f"{path}: unreadable ({exc})"}
    src_dtypes = {t.dtype for t in tensors}
    if src_dtypes != {dtype}:
        return {"status": "skipped", "detail": f"{path}: source dtype {sorted(src_dtypes)} "
                f"differs from the checkpoint's {dtype}; cannot compare bytes"}
    return {"status": "hashed", "hashes": {t.key: t.sha256() for t in tensors}}


def check_frozen(manifest: Manifest, ckpt_hashes: dict[int, dict[str, str]], dtype: str,
                 locate: Callable[[ExpertRecord], Path | str]) -> tuple[FrozenStatus, dict]:
    """locate(record) -> a local dense checkpoint path, or a reason why the source is out of reach."""
    experts, compared_any, failed = [], False, False
    for rec in sorted(manifest.experts, key=lambda r: r.index):
        actual = ckpt_hashes.get(rec.index, {})
        entry: dict[str, Any] = {"index": rec.index, "domain": rec.domain, "source": rec.source,
                                 "registry_ref": rec.registry_ref}
        if rec.sha256:
            entry["manifest"] = compare(rec.sha256, actual)
            compared_any = True
            failed |= not entry["manifest"]["ok"]
        where = locate(rec)
        if isinstance(where, str):
            entry["source_check"] = {"status": "unreachable", "detail": where}
        else:
            got = _dense_hashes(where, dtype)
            if got["status"] == "hashed":
                result = compare(got["hashes"], actual)
                got = {"status": "match" if result["ok"] else "mismatch", "path": str(where),
                       **result}
                compared_any = True
                failed |= not result["ok"]
            entry["source_check"] = got
        experts.append(entry)
    status: FrozenStatus = "failed" if failed else ("passed" if compared_any else "unchecked")
    return status, {"experts": experts, "summary": _summary(status, experts)}


def _summary(status: str, experts: list[dict]) -> str:
    if status == "failed":
        bad = [str(e["index"]) for e in experts
               if not e.get("manifest", {"ok": True})["ok"]
               or e["source_check"]["status"] == "mismatch"]
        return f"expert(s) {', '.join(bad)} differ from their recorded source tensors"
    if status == "passed":
        n = sum(1 for e in experts if "manifest" in e or e["source_check"]["status"] == "match")
        return f"{n} expert(s) bit-identical to their sources"
    return "no expert hashes in mofe.json and no reachable dense source"
