"""Validate a checkpoint directory before it is registered, and hash its files.

Checks config.json against the safetensors headers only (no tensor data is read), so a
wrong shape, a missing expert or a truncated file is refused with the file and tensor named.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from .checkpoint import (
    CheckpointError,
    TensorInfo,
    canonical_expert_tensors,
    detect_layout,
    expected_shapes,
    expert_index_in_name,
    read_all_headers,
)
from .errors import InvalidCheckpointError
from .stores import FileEntry

_FIELDS = {"mixtral": ("num_local_experts", "num_experts_per_tok", "hidden_size",
                       "intermediate_size", "num_hidden_layers", "vocab_size"),
           "llama": ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")}
_LAYOUTS = {"mixtral": ("fused", "per_expert"), "llama": ("dense",)}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class CheckpointSummary(BaseModel):
    kind: Literal["mixtral", "llama"]
    layout: str
    config: dict
    expert_dtype: str
    vllm_loadable: bool


def read_config(ckpt: Path) -> dict:
    path = ckpt / "config.json"
    if not ckpt.is_dir():
        raise InvalidCheckpointError(f"{ckpt}: not a directory")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidCheckpointError(f"{path}: missing (not a Hugging Face checkpoint)") from None
    except json.JSONDecodeError as exc:
        raise InvalidCheckpointError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") \
            from exc
    if not isinstance(config, dict):
        raise InvalidCheckpointError(f"{path}: expected a JSON object")
    return config


def inspect_checkpoint(ckpt: Path) -> CheckpointSummary:
    ckpt = Path(ckpt)
    config = read_config(ckpt)
    cfg_path = ckpt / "config.json"
    kind = config.get("model_type")
    if kind not in _FIELDS:
        raise InvalidCheckpointError(f"{cfg_path}: model_type is {kind!r}; the registry takes "
                                     "'mixtral' (MoFE models) or 'llama' (dense experts)")
    for field in _FIELDS[kind]:
        value = config.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidCheckpointError(f"{cfg_path}: field {field!r} must be a positive "
                                         f"integer, found {value!r}")
    if kind == "mixtral" and config["num_experts_per_tok"] > config["num_local_experts"]:
        raise InvalidCheckpointError(
            f"{cfg_path}: num_experts_per_tok ({config['num_experts_per_tok']}) exceeds "
            f"num_local_experts ({config['num_local_experts']})")
    try:
        tensors = read_all_headers(ckpt)
        layout = detect_layout(tensors)
    except CheckpointError as exc:
        raise InvalidCheckpointError(f"{ckpt}: {exc}") from exc
    if layout not in _LAYOUTS[kind]:
        raise InvalidCheckpointError(f"{ckpt}: config.json says {kind} but the weights have "
                                     f"the {layout} layout")
    _check_bounds(tensors)
    _check_shapes(tensors, config, layout, cfg_path)
    dtypes = {t.dtype for t in canonical_expert_tensors(ckpt)}
    return CheckpointSummary(kind=kind, layout=layout, config=config,
                             expert_dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
                             vllm_loadable=layout in ("per_expert", "dense"))


def _check_shapes(tensors: dict[str, TensorInfo], config: dict, layout: str,
                  cfg_path: Path) -> None:
    expected = expected_shapes(config, layout)
    if not config.get("tie_word_embeddings", False) or "lm_head.weight" in tensors:
        expected["lm_head.weight"] = (config["vocab_size"], config["hidden_size"])
    for name, shape in expected.items():
        t = tensors.get(name)
        if t is None:
            raise InvalidCheckpointError(f"{cfg_path.parent}: tensor {name} is missing "
                                         f"(expected shape {shape} from {cfg_path.name})")
        if t.shape != shape:
            raise InvalidCheckpointError(f"{t.file}: tensor {name} has shape {t.shape}, but "
                                         f"{cfg_path.name} implies {shape}")
    layers, experts = config["num_hidden_layers"], config.get("num_local_experts", 1)
    for name, t in tensors.items():
        if (m := _LAYER.match(name)) and int(m[1]) >= layers:
            raise InvalidCheckpointError(f"{t.file}: tensor {name} is beyond num_hidden_layers "
                                         f"= {layers} in {cfg_path.name}")
        if (x := expert_index_in_name(name)) is not None and x >= experts:
            raise InvalidCheckpointError(f"{t.file}: tensor {name} is beyond num_local_experts "
                                         f"= {experts} in {cfg_path.name}")


def _check_bounds(tensors: dict[str, TensorInfo]) -> None:
    sizes: dict[Path, int] = {}
    for name, t in tensors.items():
        size = sizes.setdefault(t.file, t.file.stat().st_size)
        if t.end > size or t.start > t.end:
            raise InvalidCheckpointError(f"{t.file}: tensor {name} ends at byte {t.end} but "
                                         f"the file has {size} bytes (truncated?)")


def hash_files(ckpt: Path) -> list[FileEntry]:
    """SHA-256 and size of every regular file under `ckpt` (sorted, '/'-separated paths)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(ckpt):
        dirnames.sort()
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            out.append(FileEntry(path=path.relative_to(ckpt).as_posix(),
                                 size=path.stat().st_size, sha256=file_sha256(path)))
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
