"""Rewrite a Mixtral checkpoint into the per-expert layout vLLM's native loader reads.

Pure byte slicing (see checkpoint.py), written with the safetensors library's own
serializer; no torch. Output goes to a temporary sibling directory that is renamed into
place at the end, so an interrupted conversion never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors import TensorSpec, serialize_file

from .checkpoint import (
    DTYPE_NAMES,
    CheckpointError,
    _row_slice,
    detect_layout,
    read_all_headers,
    read_header,
    weight_files,
)

_FUSED_GATE = re.compile(r"^model\.layers\.(\d+)\.mlp\.gate\.weight$")
_FUSED_EXPERTS = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_SKIP_FILES = {"model.safetensors.index.json"}


def _per_expert_tensors(name: str, info) -> list[tuple[str, str, list[int], int, int]]:
    """(new name, dtype, shape, start, end) for one tensor of the fused layout."""
    if m := _FUSED_GATE.match(name):
        return [(f"model.layers.{m[1]}.block_sparse_moe.gate.weight", info.dtype,
                 list(info.shape), info.start, info.end)]
    if m := _FUSED_EXPERTS.match(name):
        n_exp, rows, cols = info.shape
        prefix = f"model.layers.{m[1]}.block_sparse_moe.experts"
        out = []
        for e in range(n_exp):
            if m[2] == "gate_up_proj":
                half = rows // 2
                for proj, off in (("w1", 0), ("w3", half)):
                    s, en = _row_slice(info, e, half, off)
                    out.append((f"{prefix}.{e}.{proj}.weight", info.dtype, [half, cols], s, en))
            else:
                s, en = _row_slice(info, e, rows)
                out.append((f"{prefix}.{e}.w2.weight", info.dtype, [rows, cols], s, en))
        return out
    return [(name, info.dtype, list(info.shape), info.start, info.end)]


def convert_to_vllm_layout(src: Path, dst: Path, overwrite: bool = False) -> Path:
    """Write `src` (fused or per-expert Mixtral) to `dst` in the per-expert layout."""
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json (not a Hugging Face checkpoint)")
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") != "mixtral":
        raise CheckpointError(f"{src}/config.json: model_type is {config.get('model_type')!r}, "
                              "expected 'mixtral'")
    layout = detect_layout(read_all_headers(src))
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; a checkpoint is shared read-only data
    try:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.suffix != ".safetensors" and f.name not in _SKIP_FILES:
                shutil.copy2(f, tmp / f.name)
        for f in weight_files(src):
            header = read_header(f)
            # Zero-copy: the serializer reads each tensor straight from a read-only mmap.
            mm = np.memmap(f, dtype=np.uint8, mode="r")
            base = mm.ctypes.data
            tensors = {}
            for name, info in header.items():
                pieces = ([(name, info.dtype, list(info.shape), info.start, info.end)]
                          if layout == "per_expert" else _per_expert_tensors(name, info))
                for new_name, dtype, shape, s, e in pieces:
                    tensors[new_name] = TensorSpec(dtype=DTYPE_NAMES[dtype], shape=shape,
                                                   data_ptr=base + s, data_len=e - s)
            serialize_file(tensors, str(tmp / f.name), metadata={"format": "pt"})
            (tmp / f.name).chmod(0o644)
            del mm
        _write_index(tmp)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _write_index(ckpt: Path) -> None:
    files = weight_files(ckpt)
    if len(files) == 1:
        return
    weight_map, total = {}, 0
    for f in files:
        for name, info in read_header(f).items():
            weight_map[name] = f.name
            total += info.end - info.start
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
