"""One output JSONL line per scored question."""

from __future__ import annotations

from .scoring import ScoreItem, rank
from .tasks import Question


def result_row(q: Question, item: ScoreItem, loglikelihoods: list[float],
               chunk_routed: dict[str, int] | None, token_fraction: float) -> dict:
    ranked = rank(loglikelihoods, q.choices)
    gold = q.gold
    routed = None
    share = None
    if chunk_routed is not None:
        routed = {d: n * token_fraction for d, n in chunk_routed.items()}
        total = sum(chunk_routed.values())
        share = {d: (n / total if total else 0.0) for d, n in chunk_routed.items()}
    return {
        "id": q.id,
        "subject": q.subject,
        "position": q.position,
        "prediction": q.choices[ranked.prediction],
        "prediction_norm": q.choices[ranked.prediction_norm],
        "gold": q.choices[gold] if gold is not None else None,
        "correct": (ranked.prediction == gold) if gold is not None else None,
        "correct_norm": (ranked.prediction_norm == gold) if gold is not None else None,
        "loglikelihoods": dict(zip(q.choices, ranked.loglikelihoods, strict=True)),
        "num_tokens": item.num_tokens,
        # prompt tokens the engine computed (the rest came from its prefix cache); routing
        # counts cover these
        "computed_tokens": item.computed_tokens,
        "truncated": item.truncated,
        "expert_share": share,  # by domain, summed over layers; None without counters
        "routed_tokens": routed,  # this row's part of its chunk's routed token slots
    }
