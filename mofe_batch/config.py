"""`mofe batch` settings, and the input pre-pass (row count, MedMCQA cop convention)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .readers import BadRecord, iter_records
from .tasks import cop_value


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="REF: checkpoint path, NAME@VERSION, or hub id")
    task: Literal["medmcqa", "mmlu", "pubmedqa", "mcq"]
    input: Path
    output: Path
    shots: int = Field(0, ge=0)
    dev: Path | None = None
    seed: int = 1234
    endpoint: str | None = None
    api_key: str | None = None
    served_model: str | None = None
    concurrency: int = Field(8, ge=1)
    limit: int | None = Field(None, ge=1)
    strict: bool = False
    cop_base: Literal["auto", "0", "1"] = "auto"
    template: str | None = None
    chat_template: bool = False
    report_png: bool = False
    dtype: str = "auto"
    backend: Literal["vllm", "hf"] = "vllm"
    chunk_size: int = Field(64, ge=1)
    routing: Literal["chunk", "question"] = "chunk"
    max_model_len: int | None = Field(None, ge=8)
    threads: int | None = Field(None, ge=1)
    progress: bool = True


@dataclass
class PrePass:
    records: int
    cop_base: int | None
    cop_reason: str | None


def pre_pass(path: Path, task: str, cop_base: str) -> PrePass:
    """Counts records (for the progress bar) and, for MedMCQA, settles the cop convention.

    auto: any cop == 4 means 1-based (the dataset card's 1-4); any cop == 0 means 0-based
    (the released data and lm-eval); neither seen defaults to 0-based with a warning.
    """
    records, seen = 0, set()
    for _, record in iter_records(path):
        records += 1
        if task == "medmcqa" and not isinstance(record, BadRecord):
            value = cop_value(record)
            if value in (0, 4):
                seen.add(value)
    if task != "medmcqa":
        return PrePass(records, None, None)
    if cop_base != "auto":
        return PrePass(records, int(cop_base), f"--cop-base {cop_base}")
    if seen == {4}:
        return PrePass(records, 1, "auto: the data has cop == 4 and no cop == 0")
    if seen == {0}:
        return PrePass(records, 0, "auto: the data has cop == 0 and no cop == 4")
    if seen == {0, 4}:
        return PrePass(records, 0, "auto: WARNING the data has both cop == 0 and cop == 4; "
                                   "used 0-based, so cop == 4 rows are skipped as out of range")
    return PrePass(records, 0, "auto: WARNING no cop == 0 or cop == 4 in the data, so the "
                               "convention is ambiguous; defaulted to 0-based (lm-eval and "
                               "the released data); pass --cop-base 1 for 1-4")
