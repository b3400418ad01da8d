"""Lineage of a version: merged parent, base model and source experts, from its mofe.json.

Each source is marked with the registered version that holds it, found by (1) its recorded
registry_ref, (2) its path matching a registered source path, or, for experts, (3) a dense
registered model whose FFN tensors have exactly this expert's canonical hashes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .errors import RegistryError
from .manifest import Manifest, ModelSource
from .registry import Registry

MAX_DEPTH = 4


def expert_digest(hashes: dict[str, str]) -> str:
    """One short identity for an expert: SHA-256 over its sorted per-tensor hashes."""
    text = "\n".join(f"{k}={h}" for k, h in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def lineage(registry: Registry, ref: str, _depth: int = 0) -> dict[str, Any]:
    info = registry.get(ref)
    node: dict[str, Any] = {"ref": info.ref, "kind": info.kind, "aliases": info.aliases,
                            "frozen_check": info.frozen_check, "source_path": info.source_path}
    if not info.manifest:
        node["note"] = "no mofe.json: sources unknown"
        return node
    manifest = Manifest.model_validate(info.manifest)
    origin = Path(info.source_path)
    stored = registry.meta.expert_hashes(info.name, info.version)
    if manifest.parent:
        node["parent"] = _source(registry, manifest.parent, origin)
        parent_ref = node["parent"]["registered"]
        if parent_ref and parent_ref != info.ref and _depth < MAX_DEPTH:
            node["parent"]["lineage"] = lineage(registry, parent_ref, _depth + 1)
    if manifest.base_model:
        node["base_model"] = _source(registry, manifest.base_model, origin)
    per_expert = {e["index"]: e for e in info.frozen_details.get("experts", [])}
    node["experts"] = []
    for rec in sorted(manifest.experts, key=lambda r: r.index):
        hashes = stored.get(rec.index, {})
        entry = _source(registry, rec, origin, hashes, exclude=info.ref)
        check = per_expert.get(rec.index, {})
        entry |= {"index": rec.index, "domain": rec.domain, "tensors": len(hashes),
                  "digest": expert_digest(hashes) if hashes else None,
                  "manifest_hashes": _ok(check.get("manifest")),
                  "source_check": check.get("source_check", {}).get("status")}
        node["experts"].append(entry)
    return node


def _ok(result: dict | None) -> str | None:
    if result is None:
        return None
    return "match" if result["ok"] else f"MISMATCH ({result['n_mismatched']} tensors)"


def _source(registry: Registry, src: ModelSource, origin: Path,
            hashes: dict[str, str] | None = None, exclude: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"source": src.source, "revision": src.revision, "registered": None,
                           "matched_by": None}
    if src.registry_ref:
        try:
            out["registered"], out["matched_by"] = registry.get(src.registry_ref).ref, "ref"
            return out
        except RegistryError:
            pass
    p = Path(src.source).expanduser()
    for cand in ([p] if p.is_absolute() else [origin / p, Path.cwd() / p]):
        for info in registry.meta.find_by_source(str(cand.resolve())):
            if info.ref != exclude:
                out["registered"], out["matched_by"] = info.ref, "path"
                return out
    if hashes:
        first_key = min(hashes)
        for name, version, expert, _key in registry.meta.find_by_tensor_hash(hashes[first_key]):
            ref = f"{name}@{version}"
            other = registry.meta.get(name, version)
            if ref != exclude and expert == 0 and other and other.kind == "llama" and \
                    registry.meta.expert_hashes(name, version).get(0) == hashes:
                out["registered"], out["matched_by"] = ref, "hash"
                return out
    return out
