"""A MoFE family for `mofe serve REF REF ...`: the variants, their names, and the start-up check.

Torch-free and vLLM-free: runs in the CLI before any engine process starts.

Variants of one family were trained from one merge with the experts frozen, so every expert
FFN tensor is identical in all of them (by canonical hash, model_registry.checkpoint: the
layout on disk does not matter). One engine can then hold the experts once. Start-up refuses
anything else, naming the first differing expert and layer, and also refuses variants whose
architecture (config.json) or tokenizer differ, since the engine runs one model shape and
one tokenizer for all of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .resolve import ServedModel

# config.json keys that may differ between variants of one family (bookkeeping, not shape).
# (pad_token_id: training sets it; vLLM does not use it to generate.)
CONFIG_KEYS_ALLOWED_TO_DIFFER = frozenset({"_name_or_path", "transformers_version",
                                           "architectures", "output_router_logits",
                                           "use_cache", "pad_token_id"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "chat_template.jinja")


class FamilyError(ValueError):
    """The REFs given to `mofe serve` are not one family; the message says what differs."""


@dataclass(frozen=True)
class Family:
    """The variants one engine serves; variant i is `variants[i]` (the engine's index)."""

    variants: tuple[ServedModel, ...]

    @property
    def paths(self) -> list[Path]:
        return [v.path for v in self.variants]

    @property
    def display_names(self) -> list[str]:
        return [v.names[0] for v in self.variants]

    @property
    def all_names(self) -> list[str]:
        return [name for v in self.variants for name in v.names]

    def variant_of(self, model_name: str) -> int | None:
        for index, variant in enumerate(self.variants):
            if model_name in variant.names:
                return index
        return None


def _config(path: Path) -> dict:
    cfg = json.loads((path / "config.json").read_text())
    return {k: v for k, v in cfg.items() if k not in CONFIG_KEYS_ALLOWED_TO_DIFFER}


def _tokenizer_bytes(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in TOKENIZER_FILES
            if (path / name).is_file()}


def check_family(variants: Sequence[ServedModel], refs: Sequence[str]) -> None:
    """Raise FamilyError unless every variant has the first one's architecture, tokenizer
    and expert tensors. `refs` are the REFs as typed, for the messages."""
    from model_registry.checkpoint import expert_hashes, first_expert_difference

    first, first_ref = variants[0], refs[0]
    config, tokenizer = _config(first.path), _tokenizer_bytes(first.path)
    hashes = expert_hashes(first.path)
    for variant, ref in zip(variants[1:], refs[1:], strict=True):
        other = _config(variant.path)
        keys = sorted(k for k in set(config) | set(other) if config.get(k) != other.get(k))
        if keys:
            k = keys[0]
            raise FamilyError(
                f"{ref} ({variant.path}) is not in {first_ref}'s family: config.json "
                f"{k} is {other.get(k)!r}, {first_ref} has {config.get(k)!r}")
        theirs = _tokenizer_bytes(variant.path)
        for name in sorted(set(tokenizer) | set(theirs)):
            if tokenizer.get(name) != theirs.get(name):
                raise FamilyError(f"{ref} ({variant.path}) is not in {first_ref}'s family: "
                                  f"its {name} differs (one engine runs one tokenizer)")
        diff = first_expert_difference(hashes, expert_hashes(variant.path))
        if diff is not None:
            expert, key = diff
            layer, proj = key.split(".")
            raise FamilyError(
                f"{ref} ({variant.path}) is not in {first_ref}'s family: expert {expert} of "
                f"layer {layer} ({proj}) differs. Variants served together must share every "
                "expert FFN tensor (canonical hash, model_registry.checkpoint)")


def build_family(variants: Sequence[ServedModel], refs: Sequence[str]) -> Family:
    """Check the variants and that no served name belongs to two of them."""
    check_family(variants, refs)
    seen: dict[str, str] = {}
    for variant, ref in zip(variants, refs, strict=True):
        for name in variant.names:
            if name in seen:
                raise FamilyError(f"{ref} and {seen[name]} are both served as {name!r}: "
                                  "give each variant once")
            seen[name] = ref
    return Family(tuple(variants))
