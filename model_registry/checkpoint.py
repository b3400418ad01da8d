"""The MoFE checkpoint format, in one place and without torch (see docs/format.md).

Owns: the tensor-name table of both Mixtral layouts and of a dense Llama FFN, the fused <->
per-expert slicing, canonical per-expert tensors and their hashes, the dtype rule used when a
checkpoint is compared with its sources, file-level layout conversion and atomic writes.
`training`, `model_registry` and `mofe_serve` use these names and functions; none of them
writes a layout name or a slice itself.

Two on-disk layouts hold the same expert weights (I = intermediate_size, H = hidden_size):
  fused (transformers 5 in memory; written by mergekit):
    model.layers.N.mlp.experts.gate_up_proj  [E, 2I, H]   expert e: rows [0, I) = w1, [I, 2I) = w3
    model.layers.N.mlp.experts.down_proj     [E, H, I]    expert e: w2
    model.layers.N.mlp.gate.weight           [E, H]       the router
  per-expert (vLLM 0.32's native Mixtral loader; transformers' save_pretrained of a new model):
    model.layers.N.block_sparse_moe.experts.e.{w1,w2,w3}.weight   [I, H] / [H, I] / [I, H]
    model.layers.N.block_sparse_moe.gate.weight                  [E, H]
  dense Llama FFN (a source expert): model.layers.N.mlp.{gate_proj,down_proj,up_proj}.weight
w1 = gate_proj, w2 = down_proj, w3 = up_proj.

Every per-expert tensor is a contiguous byte range in both layouts (row blocks of a
row-major array), so canonical tensors are byte slices: hashing and converting need no
dtype arithmetic. Hashes cover dtype, shape and bytes, so they identify a tensor whatever
layout or file it sits in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ---- the name table ---------------------------------------------------------------------
LAYOUTS = ("fused", "per_expert", "dense")
PROJECTIONS = ("w1", "w2", "w3")
DENSE_PROJ = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
# fused tensor -> the projections stacked along dim 1 of each expert's block, in order
FUSED_PARTS = {"gate_up_proj": ("w1", "w3"), "down_proj": ("w2",)}
# substrings of in-memory parameter names (either layout): expert FFNs and routers
EXPERT_PARAM_MARKERS = (".mlp.experts.", ".block_sparse_moe.experts.")
ROUTER_PARAM_MARKERS = (".mlp.gate.", ".block_sparse_moe.gate.")

_LAYER = "model.layers.{layer}"


def router_name(layer: int, layout: str) -> str:
    moe = "mlp" if layout == "fused" else "block_sparse_moe"
    return f"{_LAYER.format(layer=layer)}.{moe}.gate.weight"


def fused_name(layer: int, fused: str) -> str:
    return f"{_LAYER.format(layer=layer)}.mlp.experts.{fused}"


def per_expert_name(layer: int, expert: int, proj: str) -> str:
    return f"{_LAYER.format(layer=layer)}.block_sparse_moe.experts.{expert}.{proj}.weight"


def dense_name(layer: int, proj: str) -> str:
    hf = {v: k for k, v in DENSE_PROJ.items()}[proj]
    return f"{_LAYER.format(layer=layer)}.mlp.{hf}.weight"


_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_PER_EXPERT = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_DENSE = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate_proj|down_proj|up_proj)\.weight$")
_ROUTER = re.compile(r"^model\.layers\.(\d+)\.(mlp|block_sparse_moe)\.gate\.weight$")
_EXPERT_INDEX = re.compile(r"\.block_sparse_moe\.experts\.(\d+)\.")


@dataclass(frozen=True)
class ParsedName:
    kind: str  # fused | per_expert | dense | router
    layer: int
    expert: int | None = None
    proj: str | None = None  # w1 | w2 | w3 (per_expert, dense)
    fused: str | None = None  # gate_up_proj | down_proj (fused)
    layout: str | None = None  # router: fused | per_expert


def parse_name(name: str) -> ParsedName | None:
    """What an expert-related tensor name means; None for every other tensor."""
    if m := _FUSED.match(name):
        return ParsedName("fused", int(m[1]), fused=m[2])
    if m := _PER_EXPERT.match(name):
        return ParsedName("per_expert", int(m[1]), int(m[2]), m[3])
    if m := _DENSE.match(name):
        return ParsedName("dense", int(m[1]), 0, DENSE_PROJ[m[2]])
    if m := _ROUTER.match(name):
        return ParsedName("router", int(m[1]),
                          layout="fused" if m[2] == "mlp" else "per_expert")
    return None


def expert_index_in_name(name: str) -> int | None:
    """The expert index of a per-expert tensor name (any suffix), else None."""
    m = _EXPERT_INDEX.search(name)
    return int(m[1]) if m else None


def fused_rows(fused: str, rows: int) -> list[tuple[str, int, int]]:
    """(proj, first row, row count) of each projection inside one expert's fused block."""
    parts = FUSED_PARTS[fused]
    if rows % len(parts):
        raise CheckpointError(f"{fused}: {rows} rows do not split into {len(parts)} projections")
    n = rows // len(parts)
    return [(proj, i * n, n) for i, proj in enumerate(parts)]


def expected_shapes(config: dict, layout: str) -> dict[str, tuple[int, ...]]:
    """Every expert, router and embedding tensor a config.json implies, with its shape."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    e = config.get("num_local_experts", 1)
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    proj_shape = {"w1": (i, h), "w3": (i, h), "w2": (h, i)}
    for n in range(config["num_hidden_layers"]):
        if layout == "fused":
            out[fused_name(n, "gate_up_proj")] = (e, 2 * i, h)
            out[fused_name(n, "down_proj")] = (e, h, i)
            out[router_name(n, layout)] = (e, h)
        elif layout == "per_expert":
            out[router_name(n, layout)] = (e, h)
            for x in range(e):
                out |= {per_expert_name(n, x, p): s for p, s in proj_shape.items()}
        else:
            out |= {dense_name(n, p): s for p, s in proj_shape.items()}
    return out


# ---- in-memory tensors (numpy arrays or torch tensors: only indexing is used) -----------
def per_expert_items(name: str, tensor: Any) -> Iterator[tuple[str, Any]]:
    """One (name, tensor) of either layout as per-expert (name, view) pairs.

    Fused tensors are split by indexing only (tensor[e, a:b]), so this works unchanged on
    numpy arrays and torch tensors, and the views share memory with `tensor`."""
    p = parse_name(name)
    if p is None or p.kind in ("per_expert", "dense"):
        yield name, tensor
    elif p.kind == "router":
        yield router_name(p.layer, "per_expert"), tensor
    else:
        for e in range(tensor.shape[0]):
            for proj, start, rows in fused_rows(p.fused, tensor.shape[1]):
                yield per_expert_name(p.layer, e, proj), tensor[e, start:start + rows]


def to_per_expert(state: dict[str, Any]) -> dict[str, Any]:
    return dict(item for name, t in state.items() for item in per_expert_items(name, t))


def to_fused(state: dict[str, Any], stack: Callable, concat: Callable) -> dict[str, Any]:
    """The fused layout of a state dict in either layout. `stack`/`concat` are the array
    library's (torch.stack/torch.cat, np.stack/np.concatenate), both along dim 0."""
    out: dict[str, Any] = {}
    experts: dict[int, dict[int, dict[str, Any]]] = {}
    for name, t in state.items():
        p = parse_name(name)
        if p is not None and p.kind == "router":
            out[router_name(p.layer, "fused")] = t
        elif p is not None and p.kind == "per_expert":
            experts.setdefault(p.layer, {}).setdefault(p.expert, {})[p.proj] = t
        else:
            out[name] = t
    for layer, by_expert in experts.items():
        order = [by_expert[e] for e in sorted(by_expert)]
        for fused, parts in FUSED_PARTS.items():
            blocks = [concat([w[proj] for proj in parts]) if len(parts) > 1 else w[parts[0]]
                      for w in order]
            out[fused_name(layer, fused)] = stack(blocks)
    return out


# ---- safetensors headers ----------------------------------------------------------------
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# safetensors header dtype -> the dtype name safetensors.serialize_file expects
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
               "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
               "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
DTYPE_CODES = {v: k for k, v in DTYPE_NAMES.items()}  # "bfloat16" -> "BF16"
WEIGHTS_INDEX = "model.safetensors.index.json"


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


def detect_layout(tensors: Iterable[str]) -> str:
    """'fused', 'per_expert' or 'dense' (a Llama FFN), from tensor names."""
    kinds = {p.kind for p in map(parse_name, tensors) if p is not None}
    for layout in LAYOUTS:
        if layout in kinds:
            return layout
    raise CheckpointError("no expert or FFN tensors found (neither Mixtral nor Llama names)")


def layout_of(ckpt: Path) -> str:
    return detect_layout(read_all_headers(ckpt))


def vllm_loadable(ckpt: Path) -> bool:
    """Stock vLLM 0.32 (without the MoFE plugin) reads the per-expert layout only;
    `mofe serve` reads both."""
    return layout_of(ckpt) == "per_expert"


# ---- canonical per-expert tensors and their hashes ----------------------------------------
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

    def sha256(self, as_dtype: str | None = None) -> str:
        """Hash of this tensor, or of it converted to `as_dtype` (a safetensors code)."""
        if as_dtype is None or as_dtype == self.dtype:
            return tensor_sha256(self.dtype, self.shape, self.read())
        where = f"{self.file} layer {self.layer} expert {self.expert} {self.proj}"
        return tensor_sha256(as_dtype, self.shape,
                             convert_dtype(self.read(), self.dtype, as_dtype, where))


def tensor_sha256(dtype: str, shape: tuple[int, ...], data: bytes) -> str:
    h = hashlib.sha256(f"{dtype}|{','.join(map(str, shape))}|".encode())
    h.update(data)
    return h.hexdigest()


def _row_bytes(t: TensorInfo, index: int, row_offset: int, rows: int) -> tuple[int, int]:
    """Byte range of rows [row_offset, row_offset+rows) of sub-array `index` of a 3-D tensor."""
    _, r, c = t.shape
    item = DTYPE_SIZES[t.dtype]
    start = t.start + (index * r + row_offset) * c * item
    return start, start + rows * c * item


def _canonical_pieces(t: TensorInfo) -> Iterator[tuple[str, str, tuple[int, ...], int, int]]:
    """Per-expert (name, dtype, shape, start, end) byte ranges of one stored tensor."""
    p = parse_name(t.name)
    if p is None or p.kind in ("per_expert", "dense"):
        yield t.name, t.dtype, t.shape, t.start, t.end
    elif p.kind == "router":
        yield router_name(p.layer, "per_expert"), t.dtype, t.shape, t.start, t.end
    else:
        if len(t.shape) != 3:
            raise CheckpointError(f"{t.file}: {t.name} should be 3-D, has shape {t.shape}")
        for e in range(t.shape[0]):
            for proj, off, rows in fused_rows(p.fused, t.shape[1]):
                s, en = _row_bytes(t, e, off, rows)
                yield (per_expert_name(p.layer, e, proj), t.dtype, (rows, t.shape[2]), s, en)


def canonical_expert_tensors(ckpt: Path) -> Iterator[CanonicalTensor]:
    """Yield every expert FFN tensor of a checkpoint as (layer, expert, proj) byte ranges."""
    tensors = read_all_headers(ckpt)
    detect_layout(tensors)  # refuses a checkpoint with no expert or FFN tensors
    for name in sorted(tensors, key=_natural_key):
        for new, dtype, shape, s, e in _canonical_pieces(tensors[name]):
            p = parse_name(new)
            if p is not None and p.kind in ("per_expert", "dense"):
                yield CanonicalTensor(p.layer, p.expert, p.proj, dtype, shape,
                                      tensors[name].file, s, e)


def expert_hashes(ckpt: Path, as_dtype: str | None = None) -> dict[int, dict[str, str]]:
    """{expert: {"<layer>.<proj>": sha256}} for every expert FFN tensor of a checkpoint
    (a dense model yields expert 0: its FFN), optionally after conversion to `as_dtype`
    ("bfloat16" or a safetensors code such as "BF16") by the rule of `convert_dtype`."""
    code = DTYPE_CODES.get(as_dtype, as_dtype) if as_dtype else None
    out: dict[int, dict[str, str]] = {}
    for ct in canonical_expert_tensors(ckpt):
        out.setdefault(ct.expert, {})[ct.key] = ct.sha256(code)
    return out



def non_expert_tensors(ckpt: Path) -> list[TensorInfo]:
    """Every tensor of a checkpoint that is not an expert FFN (embeddings, attention, norms,
    routers, lm_head), in natural order: what differs between variants of one family. A
    reader of these never touches the expert bytes."""
    tensors = read_all_headers(ckpt)
    return [tensors[n] for n in sorted(tensors, key=_natural_key)
            if (p := parse_name(n)) is None or p.kind == "router"]


def first_expert_difference(a: dict[int, dict[str, str]],
                            b: dict[int, dict[str, str]]) -> tuple[int, str] | None:
    """(expert, "<layer>.<proj>") of the first expert tensor whose hash differs between two
    `expert_hashes` results (missing on either side counts), in expert then layer order;
    None when every expert tensor is identical."""
    for expert in sorted(set(a) | set(b)):
        ta, tb = a.get(expert, {}), b.get(expert, {})
        for key in sorted(set(ta) | set(tb), key=_natural_key):
            if ta.get(key) != tb.get(key):
                return expert, key
    return None

# ---- the dtype rule of the frozen claim -------------------------------------------------
FLOAT_CODES = ("F32", "BF16", "F16")


def convert_dtype(data: bytes, src: str, dst: str, where: object = "") -> bytes:
    """Float tensor bytes converted from `src` to `dst` (safetensors codes) exactly as
    torch's `Tensor.to` does it: widen to float32 (exact), then round to nearest, ties to
    even (the one rounding mergekit and transformers apply when they write a bf16 or fp16
    checkpoint from fp32 sources). Other dtypes are refused. NaN payloads are not part of
    the rule (torch itself writes different NaN bytes on different paths): a NaN stays a
    NaN, with the bytes torch 2.13's CPU cast from float32 writes."""
    for code in (src, dst):
        if code not in FLOAT_CODES:
            raise CheckpointError(f"{where}: cannot compare dtype {code} with another dtype "
                                  f"(only {', '.join(FLOAT_CODES)} convert)")
    if src == "F32":
        wide = np.frombuffer(data, dtype="<f4")
    elif src == "F16":
        wide = np.frombuffer(data, dtype="<f2").astype(np.float32)
    else:  # bf16 is the upper half of a float32
        wide = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if dst == "F32":
        return wide.astype("<f4").tobytes()
    if dst == "F16":
        with np.errstate(invalid="ignore", over="ignore"):
            half = wide.astype("<f2").view("<u2")
        nan = np.isnan(wide)  # torch keeps the sign only: a quiet NaN without payload
        half[nan] = np.where(np.signbit(wide[nan]), 0xFE00, 0x7E00)
        return half.tobytes()
    bits = wide.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[np.isnan(wide)] = 0xFFFF  # what torch 2.13's CPU cast writes for every NaN
    return rounded.astype("<u2").tobytes()


# ---- atomic writes ----------------------------------------------------------------------
def atomic_write_text(path: Path, text: str) -> Path:
    """Write through a temporary file in the same directory and rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(dst: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `dst` to fill; it is renamed to `dst` only on success,
    so `dst` appears complete or not at all."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; a checkpoint is shared read-only data
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- file-level conversion (`mofe convert`, and the merge's rewrite of mergekit output) --
def convert_checkpoint(src: Path, dst: Path, layout: str = "per_expert",
                       overwrite: bool = False) -> Path:
    """Write Mixtral checkpoint `src` (either layout) to `dst` in `layout`.

    To per-expert is zero-copy byte slicing; to fused concatenates each layer's expert
    blocks in memory. Written with the safetensors library's own serializer into a
    temporary sibling that is renamed into place at the end."""
    src, dst = Path(src), Path(dst)
    if layout not in ("fused", "per_expert"):
        raise ValueError(f"layout must be 'fused' or 'per_expert', not {layout!r}")
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json (not a Hugging Face checkpoint)")
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") != "mixtral":
        raise CheckpointError(f"{src}/config.json: model_type is {config.get('model_type')!r}, "
                              "expected 'mixtral'")
    layout_of(src)
    with atomic_directory(dst, overwrite) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.suffix != ".safetensors" and f.name != WEIGHTS_INDEX:
                shutil.copy2(f, tmp / f.name)
        for f in weight_files(src):
            # Zero-copy: the serializer reads each tensor straight from a read-only mmap.
            mm = np.memmap(f, dtype=np.uint8, mode="r")
            pieces = [(name, dtype, shape, mm[s:e]) for t in read_header(f).values()
                      for name, dtype, shape, s, e in _canonical_pieces(t)]
            if layout == "fused":
                pieces = _fused_pieces(pieces)
            _serialize(pieces, tmp / f.name)
            del pieces, mm
        write_weights_index(tmp)
    return dst


def _serialize(pieces: list[tuple], path: Path) -> None:
    """(name, dtype code, shape, uint8 array) -> one safetensors file, mode 0644."""
    from safetensors import TensorSpec, serialize_file

    tensors = {name: TensorSpec(dtype=DTYPE_NAMES[dtype], shape=list(shape),
                                data_ptr=data.ctypes.data, data_len=data.nbytes)
               for name, dtype, shape, data in pieces}
    serialize_file(tensors, str(path), metadata={"format": "pt"})
    Path(path).chmod(0o644)


def _fused_pieces(pieces: list[tuple]) -> list[tuple]:
    """(name, dtype, shape, bytes) in the per-expert layout -> the fused layout: each
    layer's expert blocks are concatenated into new buffers, other tensors are unchanged."""
    out, groups = [], {}
    for name, dtype, shape, data in pieces:
        p = parse_name(name)
        if p is not None and p.kind == "router":
            out.append((router_name(p.layer, "fused"), dtype, shape, data))
        elif p is not None and p.kind == "per_expert":
            groups.setdefault(p.layer, {})[(p.expert, p.proj)] = (dtype, shape, data)
        else:
            out.append((name, dtype, shape, data))
    for layer, parts in sorted(groups.items()):
        n_exp = 1 + max(e for e, _ in parts)
        for fused, projs in FUSED_PARTS.items():
            try:
                chunks = [parts[(e, proj)] for e in range(n_exp) for proj in projs]
            except KeyError as exc:
                raise CheckpointError(f"layer {layer}: expert tensor {exc} is missing "
                                      "(files split one layer's experts?)") from None
            dtype, (rows, cols), _ = chunks[0]
            out.append((fused_name(layer, fused), dtype, (n_exp, rows * len(projs), cols),
                        np.concatenate([data for _, _, data in chunks])))
    return out


def write_weights_index(ckpt: Path) -> None:
    """`model.safetensors.index.json` for a sharded checkpoint (none for one file)."""
    files = weight_files(ckpt)
    if len(files) == 1:
        return
    weight_map, total = {}, 0
    for f in files:
        for name, info in read_header(f).items():
            weight_map[name] = f.name
            total += info.end - info.start
    (ckpt / WEIGHTS_INDEX).write_text(
        json.dumps({"metadata": {"total_size": total},
                    "weight_map": dict(sorted(weight_map.items(), key=lambda kv:
                                              _natural_key(kv[0])))}, indent=2))
    (ckpt / WEIGHTS_INDEX).chmod(0o644)


# ---- the content-addressed store layout (model_registry/cas.py places the files) -----------
@dataclass(frozen=True)
class StorePiece:
    """One tensor of a checkpoint as the registry stores it: per-expert layout names (dense
    FFNs keep theirs), a byte range of a source file. `expert` is (layer, expert, proj) for
    an expert FFN tensor, which is stored once as a shared blob; None for the version's own
    tensors (embeddings, attention, norms, router, lm_head)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int
    expert: tuple[int, int, str] | None

    @property
    def key(self) -> str:  # the canonical "<layer>.<proj>" key of an expert tensor
        return f"{self.expert[0]}.{self.expert[2]}" if self.expert else self.name

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def read(self) -> bytes:
        with open(self.file, "rb") as fh:
            fh.seek(self.start)
            return fh.read(self.end - self.start)

    def sha256(self) -> str:
        """The canonical hash (an expert's is the one `expert_hashes` records)."""
        return tensor_sha256(self.dtype, self.shape, self.read())


def store_pieces(ckpt: Path) -> list[StorePiece]:
    """Every tensor of a checkpoint (either layout) as per-expert-layout pieces, in natural
    name order. Nothing is read but the headers."""
    tensors = read_all_headers(ckpt)
    detect_layout(tensors)
    out = []
    for name in sorted(tensors, key=_natural_key):
        for new, dtype, shape, s, e in _canonical_pieces(tensors[name]):
            p = parse_name(new)
            expert = (p.layer, p.expert, p.proj) if p is not None and p.kind in (
                "per_expert", "dense") else None
            out.append(StorePiece(new, dtype, tuple(shape), tensors[name].file, s, e, expert))
    return out


def write_pieces(pieces: list[StorePiece], path: Path) -> None:
    """Write pieces into one safetensors file, streaming from read-only maps of their source
    files (no tensor is copied into memory)."""
    maps: dict[Path, np.memmap] = {}
    arrays = []
    for p in pieces:
        if p.file not in maps:
            maps[p.file] = np.memmap(p.file, dtype=np.uint8, mode="r")
        arrays.append((p.name, p.dtype, p.shape, maps[p.file][p.start:p.end]))
    _serialize(arrays, path)
    del arrays, maps


def expert_file_name(piece: StorePiece) -> str:
    """File name of an expert tensor's shard inside a stored version (top level: vLLM
    globs only the checkpoint's top-level *.safetensors)."""
    return f"{piece.name.removesuffix('.weight')}.safetensors"


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
