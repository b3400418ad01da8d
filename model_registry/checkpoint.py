"""Read Mixtral/Llama safetensors checkpoints as canonical per-expert tensors, without torch.

Two on-disk layouts hold the same expert weights:
  fused (transformers 5, written by mergekit):
    model.layers.N.mlp.experts.gate_up_proj  [E, 2I, H]   (w1 = gate rows, then w3 = up rows)
    model.layers.N.mlp.experts.down_proj     [E, H, I]    (w2)
    model.layers.N.mlp.gate.weight           [E, H]
  per-expert (read by vLLM 0.32's native Mixtral loader):
    model.layers.N.block_sparse_moe.experts.e.{w1,w2,w3}.weight   [I, H] / [H, I] / [I, H]
    model.layers.N.block_sparse_moe.gate.weight                  [E, H]
A dense Llama expert has model.layers.N.mlp.{gate,down,up}_proj.weight (w1, w2, w3).

Every per-expert tensor is a contiguous byte range in both layouts (row blocks of a
row-major array), so canonical tensors are byte slices: hashing and converting need no
dtype arithmetic and no torch. Hashes cover dtype, shape and bytes, so they identify a
tensor whatever layout or file it sits in.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# safetensors header dtype -> the dtype name safetensors.serialize_file expects
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
               "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
               "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
PROJECTIONS = ("w1", "w2", "w3")

_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_PER_EXPERT = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_DENSE = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate_proj|down_proj|up_proj)\.weight$")
_DENSE_PROJ = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


class CheckpointError(ValueError):
    """A checkpoint file or tensor is missing or malformed; the message names it."""


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in file
    end: int


@dataclass(frozen=True)
class CanonicalTensor:
    layer: int
    expert: int  # 0 for a dense model's FFN
    proj: str  # w1 | w2 | w3
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.proj}"

    def read(self) -> bytes:
        with open(self.file, "rb") as fh:
            fh.seek(self.start)
            return fh.read(self.end - self.start)

    def sha256(self) -> str:
        return tensor_sha256(self.dtype, self.shape, self.read())


def tensor_sha256(dtype: str, shape: tuple[int, ...], data: bytes) -> str:
    h = hashlib.sha256(f"{dtype}|{','.join(map(str, shape))}|".encode())
    h.update(data)
    return h.hexdigest()


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse one .safetensors header (8-byte little-endian length, then JSON)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", raw_len)
            if n > 100_000_000:
                raise CheckpointError(f"{path}: implausible header length {n}")
            header = json.loads(fh.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors header ({exc})") from exc
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = meta["data_offsets"]
            out[name] = TensorInfo(path, name, meta["dtype"], tuple(meta["shape"]),
                                   base + lo, base + hi)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed entry") from exc
    return out


def weight_files(ckpt: Path) -> list[Path]:
    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{ckpt}: no *.safetensors files")
    return files


def read_all_headers(ckpt: Path) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for f in weight_files(ckpt):
        tensors.update(read_header(f))
    return tensors


def detect_layout(tensors: dict[str, TensorInfo]) -> str:
    """'fused', 'per_expert' or 'dense' (a Llama FFN), from tensor names."""
    names = tensors.keys()
    if any(_FUSED.match(n) for n in names):
        return "fused"
    if any(_PER_EXPERT.match(n) for n in names):
        return "per_expert"
    if any(_DENSE.match(n) for n in names):
        return "dense"
    raise CheckpointError("no expert or FFN tensors found (neither Mixtral nor Llama names)")


def _row_slice(t: TensorInfo, index: int, rows: int, row_offset: int = 0) -> tuple[int, int]:
    """Byte range of rows [row_offset, row_offset+rows) of sub-array `index` of a 3-D tensor."""
    _, r, c = t.shape
    item = DTYPE_SIZES[t.dtype]
    start = t.start + (index * r + row_offset) * c * item
    return start, start + rows * c * item


def canonical_expert_tensors(ckpt: Path) -> Iterator[CanonicalTensor]:
    """Yield every expert FFN tensor of a checkpoint as (layer, expert, proj) byte ranges."""
    tensors = read_all_headers(ckpt)
    layout = detect_layout(tensors)
    for name in sorted(tensors, key=_natural_key):
        t = tensors[name]
        if layout == "per_expert" and (m := _PER_EXPERT.match(name)):
            yield CanonicalTensor(int(m[1]), int(m[2]), m[3], t.dtype, t.shape, t.file,
                                  t.start, t.end)
        elif layout == "dense" and (m := _DENSE.match(name)):
            yield CanonicalTensor(int(m[1]), 0, _DENSE_PROJ[m[2]], t.dtype, t.shape, t.file,
                                  t.start, t.end)
        elif layout == "fused" and (m := _FUSED.match(name)):
            if len(t.shape) != 3:
                raise CheckpointError(f"{t.file}: {name} should be 3-D, has shape {t.shape}")
            n_exp, rows, cols = t.shape
            layer = int(m[1])
            for e in range(n_exp):
                if m[2] == "gate_up_proj":
                    half = rows // 2
                    for proj, off in (("w1", 0), ("w3", half)):
                        s, en = _row_slice(t, e, half, off)
                        yield CanonicalTensor(layer, e, proj, t.dtype, (half, cols), t.file, s, en)
                else:
                    s, en = _row_slice(t, e, rows)
                    yield CanonicalTensor(layer, e, "w2", t.dtype, (rows, cols), t.file, s, en)


def expert_hashes(ckpt: Path) -> dict[int, dict[str, str]]:
    """{expert: {"<layer>.<proj>": sha256}} for every expert FFN tensor of a checkpoint."""
    out: dict[int, dict[str, str]] = {}
    for ct in canonical_expert_tensors(ckpt):
        out.setdefault(ct.expert, {})[ct.key] = ct.sha256()
    return out


def vllm_loadable(ckpt: Path) -> bool:
    """vLLM 0.32's native Mixtral loader reads the per-expert layout only."""
    return detect_layout(read_all_headers(ckpt)) == "per_expert"


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
