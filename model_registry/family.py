"""Families: registered versions whose expert tensors are the same.

Two versions are in one family when their expert hash maps are equal: the same canonical
hash for every (expert index, layer, projection), none more, none fewer (the
`expert_tensors` rows). That is what MoFE training produces from one merge: variants that
differ only in embeddings, attention, norms, routers and lm_head, whose experts the
content-addressed store keeps once. A dense Llama's family shares its FFN. Experts in a
different order are a different family (their positions differ).

Members are equals: nothing marks a "main" member, and aliases work per name as always.
`family(registry, ref)` is the one entry point (Registry.family); issue 17 serves a whole
family from it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .stores import VersionInfo

# Files that only say how the weights are laid out; the weights themselves are compared
# tensor by tensor.
_LAYOUT_FILES = ("model.safetensors.index.json", "mofe-store.json")
SHOWN = 3  # names per kind in a summary (--json lists them all)


class FamilyMember(VersionInfo):
    """A VersionInfo plus how it differs from the REF the family was asked for."""

    is_ref: bool = False
    shared_tensors: int = 0  # expert tensors it shares with REF (all of them)
    differs: dict[str, Any] = Field(default_factory=dict)  # config / tensors / files
    summary: str = ""


def family(registry, ref: str) -> list[FamilyMember]:
    """Every version (REF included) whose expert tensors are REF's, ordered by
    (name, version)."""
    info = registry.get(ref)
    mine = registry.meta.expert_hashes(info.name, info.version)
    candidates = {(info.name, info.version)}
    if mine:
        some = next(iter(next(iter(mine.values())).values()))
        candidates |= {(n, v) for n, v, _, _ in registry.meta.find_by_tensor_hash(some)}
    ref_tensors = _own_tensors(registry, info)
    members = []
    for name, version in sorted(candidates):
        other = registry.meta.get(name, version)
        if other is None or registry.meta.expert_hashes(name, version) != mine:
            continue
        differs = _differences(info, ref_tensors, other, _own_tensors(registry, other))
        members.append(FamilyMember(
            **other.model_dump(), is_ref=other.ref == info.ref, differs=differs,
            shared_tensors=sum(len(k) for k in mine.values()),
            summary="(this REF)" if other.ref == info.ref else _summary(differs)))
    return members


def _own_tensors(registry, info: VersionInfo) -> dict[str, str] | None:
    """Hashes of a version's own (non-expert) tensors from its artifact index; None when it
    has none (a linked version, or one stored before the index existed)."""
    if info.storage != "copy":
        return None
    try:
        index = registry.artifacts.read_index(info.artifact)
    except Exception:  # a damaged or unreachable version: differences unknown, not fatal
        return None
    return index.own_tensors if index else None


def _differences(ref: VersionInfo, ref_tensors: dict[str, str] | None, other: VersionInfo,
                 tensors: dict[str, str] | None) -> dict[str, Any]:
    keys = set(ref.config) | set(other.config)
    out: dict[str, Any] = {"config": sorted(k for k in keys
                                            if ref.config.get(k) != other.config.get(k))}
    if ref_tensors is None or tensors is None:
        out["tensors"] = None  # unknown: compare the weight files instead
    else:
        names = set(ref_tensors) | set(tensors)
        out["tensors"] = sorted(n for n in names if ref_tensors.get(n) != tensors.get(n))
    ref_files, files = _plain_files(ref), _plain_files(other)
    out["files"] = sorted(p for p in set(ref_files) | set(files)
                          if ref_files.get(p) != files.get(p))
    return out


def _plain_files(info: VersionInfo) -> dict[str, str]:
    return {f.path: f.sha256 for f in info.files
            if not f.path.endswith(".safetensors") and f.path not in _LAYOUT_FILES}


def _summary(differs: dict[str, Any]) -> str:
    parts = []
    if differs["config"]:
        parts.append("config: " + _few(differs["config"]))
    if differs["tensors"] is None:
        parts.append("own tensors: unknown (no artifact index)")
    elif differs["tensors"]:
        short = [t.removeprefix("model.").removesuffix(".weight") for t in differs["tensors"]]
        parts.append(f"{len(short)} own tensor(s): " + _few(short))
    if differs["files"]:
        parts.append("files: " + _few(differs["files"]))
    return "; ".join(parts) or "identical"


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f", … (+{len(items) - SHOWN})" if len(items) > SHOWN else "")
