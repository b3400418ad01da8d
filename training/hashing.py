"""Hashes of canonical expert FFN tensors after a dtype cast.

Uses torch (model_registry stays torch-free).

The manifest records, per expert, the SHA-256 of each source tensor *after* the cast to the
checkpoint dtype, so `mofe verify` can compare source and checkpoint bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model_registry.checkpoint import CanonicalTensor, canonical_expert_tensors, tensor_sha256

# config dtype name -> (torch dtype, safetensors header code)
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "F32"),
    "bfloat16": (torch.bfloat16, "BF16"),
    "float16": (torch.float16, "F16"),
}
_SAFE_TO_TORCH = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
                  "F64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    for name, (td, _) in DTYPES.items():
        if td == dtype:
            return name
    raise ValueError(f"unsupported checkpoint dtype {dtype}")


def cast_sha256(ct: CanonicalTensor, dtype: str) -> str:
    """SHA-256 of one canonical tensor after casting it to `dtype` ("float32", ...)."""
    torch_dtype, code = DTYPES[dtype]
    if ct.dtype == code:
        return ct.sha256()
    if ct.dtype not in _SAFE_TO_TORCH:
        raise ValueError(f"{ct.file}: expert tensor dtype {ct.dtype} is not a float type")
    src = torch.frombuffer(bytearray(ct.read()), dtype=_SAFE_TO_TORCH[ct.dtype]).reshape(ct.shape)
    data = src.to(torch_dtype).contiguous().view(torch.uint8).numpy().tobytes()
    return tensor_sha256(code, ct.shape, data)


def expert_hashes_as(ckpt: Path, dtype: str) -> dict[int, dict[str, str]]:
    """{expert: {"<layer>.<proj>": sha256}} of a checkpoint's expert tensors cast to `dtype`.

    A dense Llama model yields a single expert 0 (its FFN)."""
    out: dict[int, dict[str, str]] = {}
    for ct in canonical_expert_tensors(Path(ckpt)):
        out.setdefault(ct.expert, {})[ct.key] = cast_sha256(ct, dtype)
    return out


def compare_hashes(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Keys ("<layer>.<proj>") whose hashes differ or that are missing on either side."""
    keys = sorted(set(expected) | set(actual), key=_key_order)
    return [k for k in keys if expected.get(k) != actual.get(k)]


def _key_order(key: str) -> tuple[int, str]:
    layer, _, proj = key.partition(".")
    return (int(layer) if layer.isdigit() else 1 << 30, proj)
