"""Multiple choice scored on the option texts (lm-eval's ARC / OpenBookQA style).

`mofe batch` scores the answer letter after a prompt that lists the options (MedMCQA, MMLU).
A model that was never taught that format, such as a dense expert straight from
pretraining, can still show what it knows when each option's own text is scored as the
continuation of the question: "Question: ...\\nAnswer:" + " <option>". Same rule as
`mofe batch` (scoring.build_items, the HF backend's summed log-likelihoods, scoring.rank's
argmax), different continuations. Rows need `prompt` (or `question`), `options`, `answer`.
Used by the kit's knowledge test and benchmarks/paper_ablations.py.
"""

from __future__ import annotations

from .backend_hf import HfScorer
from .prompts import TARGET_DELIMITER
from .scoring import build_items, rank


def prompt_of(row: dict) -> str:
    return row.get("prompt") or f"Question: {row['question']}\nAnswer:"


def predict(model_dir: str, rows: list[dict], batch_size: int = 64) -> list[int]:
    """The index of the highest-scoring option for each row (lm-eval's `acc` choice)."""
    scorer = HfScorer(str(model_dir), dtype="float32", batch_size=batch_size)
    try:
        jobs = [(prompt_of(r), [TARGET_DELIMITER + o for o in r["options"]]) for r in rows]
        items = build_items(scorer.tokenizer, jobs, scorer.max_len)
        for row, item in zip(rows, items, strict=True):
            if isinstance(item, ValueError):
                raise ValueError(f"row {row.get('id', '?')}: {item}")
        lls = scorer.score(items)
    finally:
        scorer.close()
    return [rank(ll, r["options"]).prediction for ll, r in zip(lls, rows, strict=True)]


def accuracy(model_dir: str, rows: list[dict], batch_size: int = 64) -> float:
    """Share of rows whose gold option (`answer`) scores highest."""
    if not rows:
        raise ValueError("no rows to score")
    preds = predict(model_dir, rows, batch_size)
    return sum(p == r["answer"] for p, r in zip(preds, rows, strict=True)) / len(rows)
