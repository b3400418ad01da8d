"""Saving a trained model without a second copy of the frozen experts.

The final checkpoint keeps the merged checkpoint's files, tensor names, order and dtypes
(docs/format.md). A weight file whose tensors are all unchanged frozen experts is hard-linked
from the merged checkpoint; in every other file, unchanged expert tensors are streamed
byte-for-byte from the merged file by the kernel (`os.copy_file_range`: they never enter
this process), and each trained tensor is cast to the stored dtype one at a time. So the
save needs memory for one tensor, not for the model.

Trainer's mid-run checkpoints hold only the trainable parameters (`TRAINABLE_FILE`, fp32):
the frozen experts are known from the merged checkpoint, so saving them again (which
transformers' own save does by un-fusing every expert) would only cost memory and disk.

The format knowledge used here (names, layouts, headers, dtype codes) is
model_registry.checkpoint's; this module only writes safetensors files (8-byte header
length, JSON header, data) from its byte ranges.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from model_registry.checkpoint import (
    DTYPE_CODES,
    WEIGHTS_INDEX,
    CheckpointError,
    TensorInfo,
    detect_layout,
    parse_name,
    read_header,
    to_per_expert,
    weight_files,
)

TRAINABLE_FILE = "trainable.safetensors"
_CHUNK = 64 << 20  # bytes per copy call: bounded even where copy_file_range is missing


@dataclass
class SaveReport:
    """How each weight file and tensor of a save was written (tests assert on it)."""

    linked: list[str] = field(default_factory=list)  # whole files hard-linked from the source
    streamed: list[str] = field(default_factory=list)  # tensors copied from the source file
    from_model: list[str] = field(default_factory=list)  # tensors written from memory


def is_stored_expert(name: str) -> bool:
    """An expert FFN tensor in either stored layout."""
    p = parse_name(name)
    return p is not None and p.kind in ("fused", "per_expert")


def save_weights(model, source: Path, dst: Path, copy_experts: bool) -> SaveReport:
    """Write `model`'s weights into directory `dst` in `source`'s files, names and dtypes.

    With `copy_experts`, expert tensors come from `source` unchanged (the caller vouches
    that the model's experts are `source`'s: frozen, never written to); otherwise every
    tensor comes from the model."""
    source, dst = Path(source), Path(dst)
    files = weight_files(source)
    headers = {f: read_header(f) for f in files}
    stored = {n: t for h in headers.values() for n, t in h.items()}
    state = _stored_names(model, stored, skip_experts=copy_experts)
    missing = [n for n in stored if n not in state and not (copy_experts and is_stored_expert(n))]
    if missing:
        raise CheckpointError(f"{source}: tensors {missing[:5]} have no counterpart in the "
                              "trained model")
    report = SaveReport()
    dst.mkdir(parents=True, exist_ok=True)
    for f, header in headers.items():
        out = dst / f.name
        if copy_experts and all(is_stored_expert(n) for n in header):
            _link_or_copy(f, out)
            report.linked.append(f.name)
            continue
        _write_file(f, header, state, out, copy_experts, report)
    if (source / WEIGHTS_INDEX).is_file():  # same names in the same files: same index
        shutil.copyfile(source / WEIGHTS_INDEX, dst / WEIGHTS_INDEX)
    return report


def _stored_names(model, stored: dict[str, TensorInfo], skip_experts: bool) -> dict:
    """The model's tensors under the names the source checkpoint stores them by.

    In memory, transformers 5 holds the fused layout; a per-expert checkpoint renames the
    routers and splits fused experts into views (no copies)."""
    state = {n: t for n, t in model.state_dict().items()
             if not (skip_experts and is_stored_expert(n))}
    if detect_layout(stored) == "per_expert":
        state = to_per_expert(state)
    return state


def _write_file(src: Path, header: dict[str, TensorInfo], state: dict, out: Path,
                copy_experts: bool, report: SaveReport) -> None:
    import torch

    order = sorted(header.values(), key=lambda t: t.start)
    meta: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in order:
        size = t.end - t.start
        meta[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    with open(src, "rb") as sfh, open(out, "wb") as dfh:
        dfh.write(len(raw).to_bytes(8, "little") + raw)
        for t in order:
            if copy_experts and is_stored_expert(t.name):
                _copy_range(sfh.fileno(), dfh, t.start, t.end - t.start)
                report.streamed.append(t.name)
                continue
            tensor = state[t.name]
            dtype = getattr(torch, _torch_dtype(t.dtype))
            if tuple(tensor.shape) != t.shape:
                raise CheckpointError(f"{src}: {t.name} has shape {t.shape}, the trained "
                                      f"model's is {tuple(tensor.shape)}")
            data = tensor.detach().to("cpu", dtype).contiguous()  # one tensor at a time
            dfh.write(memoryview(data.view(torch.uint8).numpy()))
            report.from_model.append(t.name)
            del data
    out.chmod(0o644)


def _torch_dtype(code: str) -> str:
    names = {v: k for k, v in DTYPE_CODES.items()}
    if code not in names:
        raise CheckpointError(f"unsupported tensor dtype {code}")
    return names[code]


def _copy_range(src_fd: int, dfh, start: int, length: int) -> None:
    """Append bytes [start, start+length) of src_fd to dfh, in the kernel where possible."""
    dfh.flush()
    dst_fd = dfh.fileno()
    pos = start
    end = start + length
    while pos < end:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(_CHUNK, end - pos), pos)
        except OSError:  # e.g. across filesystems on old kernels: bounded user-space copy
            n = os.write(dst_fd, os.pread(src_fd, min(_CHUNK, end - pos), pos))
        if n <= 0:
            raise CheckpointError(f"short copy at byte {pos} of a source weight file")
        pos += n
    dfh.seek(0, os.SEEK_END)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem: stream the file
        with open(src, "rb") as sfh, open(dst, "wb") as dfh:
            _copy_range(sfh.fileno(), dfh, 0, os.fstat(sfh.fileno()).st_size)
        dst.chmod(0o644)


def make_readable(directory: Path) -> None:
    """Modes as save_pretrained writes them (0644 files, 0755 directories): a server
    running as another user (the deploy manifests use uid 10001) must read a checkpoint.
    Hard-linked files share their inode's mode, which the merge already made 0644."""
    directory = Path(directory)
    directory.chmod(0o755)
    for p in directory.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
        elif p.is_file() and p.stat().st_nlink == 1:
            p.chmod(0o644)


# ---- trainable-only Trainer checkpoints --------------------------------------------------
def save_trainable(model, directory: Path) -> Path:
    """The trainable parameters (in-memory names, their training dtype) for --resume."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    path = directory / TRAINABLE_FILE
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def load_trainable(model, path: Path) -> None:
    """Restore what save_trainable wrote; the names must be exactly the trainable ones."""
    import torch
    from safetensors import safe_open

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        names = set(fh.keys())
        if names != set(params):
            extra, missing = sorted(names - set(params)), sorted(set(params) - names)
            raise CheckpointError(f"{path}: does not match the model's trainable parameters "
                                  f"(missing {missing[:5]}, unexpected {extra[:5]})")
        with torch.no_grad():
            for name in names:
                params[name].copy_(fh.get_tensor(name))
