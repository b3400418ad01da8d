"""Resolve dense model sources (local directory or hub id) and check they can be merged.

All checks read only config.json files, so a bad merge fails in milliseconds, before mergekit
loads any weights, and before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import MergeConfig, ModelRef


class MergeError(RuntimeError):
    """A merge cannot run (bad sources, incompatible experts, mergekit refused the config)."""


# config.json fields that must agree between the base model and every expert
_MUST_MATCH = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
               "num_attention_heads", "num_key_value_heads")
_SUPPORTED = ("llama", "mistral")


def is_local(ref: ModelRef) -> bool:
    s = ref.source
    return Path(s).exists() or s.startswith((".", "/", "~")) or s.count("/") != 1


def local_dir(ref: ModelRef) -> Path:
    """The model directory: the local path, or the hub snapshot (downloaded or cached)."""
    if is_local(ref):
        path = Path(ref.source).expanduser()
        if not path.is_dir():
            raise MergeError(f"model path {ref.source} does not exist (or is not a directory)")
        return path
    try:
        import huggingface_hub

        return Path(huggingface_hub.snapshot_download(
            ref.source, revision=ref.revision,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"]))
    except Exception as exc:  # offline, missing repo, bad revision: all one clear message
        raise MergeError(f"hub model {ref.source}@{ref.revision or 'main'} is not available: "
                         f"{type(exc).__name__}: {exc}") from exc


def read_config(ref: ModelRef, role: str) -> dict:
    if is_local(ref):
        path = local_dir(ref) / "config.json"
        if not path.is_file():
            raise MergeError(f"{role} {ref.source}: no config.json (not a Hugging Face model dir)")
    else:
        try:
            import huggingface_hub

            path = Path(huggingface_hub.hf_hub_download(ref.source, "config.json",
                                                        revision=ref.revision))
        except Exception as exc:
            raise MergeError(f"{role} {ref.source}@{ref.revision or 'main'}: cannot fetch "
                             f"config.json ({type(exc).__name__}: {exc})") from exc
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MergeError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc


def check_compatible(merge: MergeConfig) -> dict:
    """Raise MergeError naming the first incompatible model; return the base config.json."""
    base = read_config(merge.base_model, "base model")
    _check_type(base, "base model", merge.base_model.source)
    for i, expert in enumerate(merge.experts):
        cfg = read_config(expert, f"expert {i} ({expert.domain})")
        _check_type(cfg, f"expert {i} ({expert.domain})", expert.source)
        for key in _MUST_MATCH:
            if base.get(key) != cfg.get(key):
                raise MergeError(
                    f"expert {i} ({expert.domain}) at {expert.source} is incompatible with the "
                    f"base model: {key} is {cfg.get(key)} but the base has {base.get(key)}")
    sources = [(e.source, e.revision) for e in merge.experts]
    if len(set(sources)) != len(sources):
        raise MergeError("the same expert model is listed twice; every expert must be distinct")
    return base


def _check_type(cfg: dict, role: str, source: str) -> None:
    if cfg.get("model_type") not in _SUPPORTED:
        raise MergeError(f"{role} {source}: model_type is {cfg.get('model_type')!r}; the merge "
                         f"needs dense {' or '.join(_SUPPORTED)} models")
