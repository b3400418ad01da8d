"""Valid questions of an input file, in order, with malformed rows counted (or fatal)."""

from __future__ import annotations

from collections import Counter

from .config import BatchConfig
from .readers import BadRecord, iter_records, position_label
from .tasks import Question, RowError, parse_row


class BatchInputError(ValueError):
    """A malformed input row under --strict (names file, line and field)."""


class Skips:
    def __init__(self, path, label: str):
        self.path, self.label = path, label
        self.by_reason: Counter = Counter()
        self.examples: list[dict] = []

    def add(self, position: int, reason: str, strict: bool) -> None:
        where = f"{self.path}:{self.label} {position}"
        if strict:
            raise BatchInputError(f"{where}: {reason}")
        self.by_reason[reason.split(" (")[0]] += 1
        if len(self.examples) < 50:
            self.examples.append({"where": where, "reason": reason})

    def as_dict(self) -> dict:
        return {"count": sum(self.by_reason.values()), "by_reason": dict(self.by_reason),
                "examples": self.examples}


def iter_questions(cfg: BatchConfig, cop_base: int | None, skips: Skips, strict: bool):
    """Valid, unique questions of the input in order (at most --limit of them)."""
    seen: dict[str, int] = {}
    for position, record in iter_records(cfg.input):
        if cfg.limit is not None and len(seen) >= cfg.limit:
            return
        if isinstance(record, BadRecord):
            skips.add(position, record.reason, strict)
            continue
        try:
            q = parse_row(cfg.task, record, position, cop_base or 0)
        except RowError as exc:
            skips.add(position, str(exc), strict)
            continue
        if q.id in seen:
            skips.add(position, f"duplicate id {q.id!r} (first at {seen[q.id]})", strict)
            continue
        seen[q.id] = position
        yield q


def load_dev(cfg: BatchConfig, cop_base: int | None) -> list[Question]:
    if cfg.dev is None:
        return []
    dev_cfg = cfg.model_copy(update={"input": cfg.dev, "limit": None})
    return list(iter_questions(dev_cfg, cop_base, Skips(cfg.dev, position_label(cfg.dev)),
                               strict=True))


