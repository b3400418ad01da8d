"""`mofe.json`: the manifest every MoFE checkpoint carries beside its config.json.

Written by `training` after a merge / training run, read by `model_registry` on register and
by `mofe_serve` for expert domain labels. Hashes are of canonical per-expert tensors
(checkpoint.py, docs/format.md), so they do not depend on the file layout.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .checkpoint import EXPERT_PARAM_MARKERS, atomic_write_text

__all__ = ["MANIFEST_FILE", "Manifest", "atomic_write_text"]

MANIFEST_FILE = "mofe.json"
MANIFEST_SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSource(_Strict):
    """Where a dense model came from: a local path or a hub id (with revision)."""

    source: str
    revision: str | None = None
    registry_ref: str | None = Field(None, description="NAME@VERSION when registered")


class ExpertRecord(ModelSource):
    index: int = Field(ge=0)
    domain: str
    # "<layer>.<proj>" -> SHA-256 of the source tensor after the cast to the checkpoint dtype
    sha256: dict[str, str] = Field(default_factory=dict)


class MergeRecord(_Strict):
    gate_mode: str
    experts_per_token: int
    dtype: str
    mergekit_version: str
    config: dict[str, Any]


class FreezeSpec(_Strict):
    method: Literal["mofe", "full", "lora", "dora", "none"] = "mofe"
    # parameter-name substrings that are frozen (expert FFNs in every layout)
    frozen: list[str] = Field(default_factory=lambda: list(EXPERT_PARAM_MARKERS))


class ParamCounts(_Strict):
    embed: int = 0
    attention: int = 0
    router: int = 0
    norms: int = 0
    lm_head: int = 0
    experts: int = 0
    adapters: int = 0
    total: int = 0
    trainable: int = 0


class TrainingRecord(_Strict):
    method: str
    config: dict[str, Any]
    data_files: dict[str, str] = Field(default_factory=dict, description="path -> SHA-256")
    seed: int
    steps: int = 0
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    trainable_params: ParamCounts | None = None


class Manifest(_Strict):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    project_version: str
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    architecture: str = "MixtralForCausalLM"
    num_layers: int = Field(gt=0)
    num_experts: int = Field(gt=0)
    top_k: int = Field(gt=0)
    dtype: str
    base_model: ModelSource | None = None
    experts: list[ExpertRecord]
    merge: MergeRecord | None = None
    freeze: FreezeSpec = Field(default_factory=FreezeSpec)
    params: ParamCounts | None = None
    training: TrainingRecord | None = None
    parent: ModelSource | None = Field(None, description="the merged checkpoint trained from")

    def domains(self) -> list[str]:
        """Domain label of each expert, by expert index."""
        by_index = {e.index: e.domain for e in self.experts}
        return [by_index.get(i, f"expert{i}") for i in range(self.num_experts)]

    @classmethod
    def load(cls, ckpt_or_file: Path) -> Manifest:
        path = Path(ckpt_or_file)
        if path.is_dir():
            path = path / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no MoFE manifest") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        if data.get("schema_version", 0) > MANIFEST_SCHEMA_VERSION:
            raise ValueError(f"{path}: manifest schema_version {data['schema_version']} is newer "
                             f"than this mofe-serve understands ({MANIFEST_SCHEMA_VERSION})")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"{path}: invalid manifest:\n{exc}") from exc

    def save(self, ckpt_dir: Path) -> Path:
        return atomic_write_text(Path(ckpt_dir) / MANIFEST_FILE, self.model_dump_json(indent=2))
