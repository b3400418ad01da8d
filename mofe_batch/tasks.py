"""Row schemas of the supported tasks, turned into `Question`s with lm-eval's prompt fields.

Each parser takes a decoded record and returns a `Question` or raises `RowError` with the
field at fault. The default prompts (prompts.py) replicate lm-evaluation-harness 0.4.13:
medmcqa (utils_medmcqa.doc_to_text, choices A-D, target cop), mmlu (_default_template_yaml
plus its per-subject description), pubmedqa (preprocess_pubmedqa.doc_to_text, choices
yes/no/maybe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("medmcqa", "mmlu", "pubmedqa", "mcq")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PUBMEDQA_CHOICES = ["yes", "no", "maybe"]


class RowError(ValueError):
    """A malformed row: message names the field."""


@dataclass
class Question:
    id: str
    subject: str
    position: int
    question: str
    options: list[str]  # the option texts shown in the prompt (empty for pubmedqa)
    choices: list[str]  # the continuations scored, without the target delimiter
    gold: int | None  # index into choices; None when the row is unlabeled
    context: str = ""  # pubmedqa abstract
    extra: dict[str, Any] = field(default_factory=dict)  # the raw record, for custom templates


def _text(record: dict, key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        if required:
            raise RowError(f"missing field {key!r}")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"field {key!r} must be a string, got {type(value).__name__}")
    text = str(value)
    if required and not text.strip():
        raise RowError(f"field {key!r} is empty")
    return text


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise RowError(f"field {key!r} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise RowError(f"field {key!r} must be an integer, got {value!r}")


def _row_id(record: dict, position: int) -> str:
    value = record.get("id")
    if value is None or value == "":
        return f"row-{position}"  # stable across reruns of the same file
    return str(value)


def cop_value(record: dict) -> int | None:
    """The raw MedMCQA `cop`, or None when absent / not an integer (for base detection)."""
    value = record.get("cop")
    try:
        return None if value is None else _int(value, "cop")
    except RowError:
        return None


def parse_medmcqa(record: dict, position: int, cop_base: int) -> Question:
    options = [_text(record, k) for k in ("opa", "opb", "opc", "opd")]
    raw = record.get("cop")
    gold = None
    if raw is not None and raw != "" and raw != -1:  # the released test split has no answers
        gold = _int(raw, "cop") - cop_base
        if not 0 <= gold < 4:
            raise RowError(f"field 'cop' is {raw}, out of range for {cop_base}-based answers "
                           f"({cop_base}..{cop_base + 3})")
    return Question(id=_row_id(record, position), position=position,
                    subject=_text(record, "subject_name", required=False) or "unknown",
                    question=_text(record, "question"), options=options,
                    choices=list(LETTERS[:4]), gold=gold, extra=record)


def _options_list(record: dict, key: str) -> list[str]:
    value = record.get(key)
    if value is None:
        raise RowError(f"missing field {key!r}")
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, list):
        raise RowError(f"field {key!r} must be a list, got {type(value).__name__}")
    if len(value) < 2 or len(value) > len(LETTERS):
        raise RowError(f"field {key!r} must have 2 to {len(LETTERS)} options, has {len(value)}")
    options = []
    for i, option in enumerate(value):
        if not isinstance(option, (str, int, float)) or isinstance(option, bool):
            raise RowError(f"{key}[{i}] must be a string, got {type(option).__name__}")
        if not str(option).strip():
            raise RowError(f"{key}[{i}] is empty")
        options.append(str(option))
    return options


def _answer_index(value: Any, key: str, n: int) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        index = LETTERS.index(value.strip().upper())
    else:
        index = _int(value, key)
    if not 0 <= index < n:
        raise RowError(f"field {key!r} is {value!r}, out of range for {n} options")
    return index


def parse_mmlu(record: dict, position: int) -> Question:
    options = _options_list(record, "choices")
    if len(options) != 4:
        raise RowError(f"field 'choices' must have 4 options for mmlu, has {len(options)}")
    return Question(id=_row_id(record, position), position=position,
                    subject=_text(record, "subject", required=False) or "unknown",
                    question=_text(record, "question"), options=options,
                    choices=list(LETTERS[:4]),
                    gold=_answer_index(record.get("answer"), "answer", 4), extra=record)


def parse_pubmedqa(record: dict, position: int) -> Question:
    # Accepts the flat form (question, context, final_decision) and bigbio's source form
    # (QUESTION, CONTEXTS list, final_decision).
    qkey = "question" if "question" in record else "QUESTION"
    ckey = next((k for k in ("context", "CONTEXTS", "contexts") if k in record), "context")
    context = record.get(ckey)
    if isinstance(context, dict):
        context = context.get("contexts")
    if hasattr(context, "tolist"):
        context = context.tolist()
    if isinstance(context, list):
        if not all(isinstance(c, str) for c in context):
            raise RowError(f"field {ckey!r} must be a string or a list of strings")
        context = "\n".join(context)  # lm-eval joins CONTEXTS with newlines
    if not isinstance(context, str) or not context.strip():
        raise RowError(f"missing or empty field {ckey!r}")
    decision = record.get("final_decision")
    gold = None
    if decision is not None and decision != "":
        if not isinstance(decision, str) or decision.strip().lower() not in PUBMEDQA_CHOICES:
            raise RowError(f"field 'final_decision' must be yes, no or maybe, got {decision!r}")
        gold = PUBMEDQA_CHOICES.index(decision.strip().lower())
    return Question(id=_row_id(record, position), position=position,
                    subject=_text(record, "subject", required=False) or "pubmedqa",
                    question=_text(record, qkey), options=[], context=context,
                    choices=list(PUBMEDQA_CHOICES), gold=gold, extra=record)


def parse_mcq(record: dict, position: int) -> Question:
    options = _options_list(record, "options")
    return Question(id=_row_id(record, position), position=position,
                    subject=_text(record, "subject", required=False) or "unknown",
                    question=_text(record, "question"), options=options,
                    choices=list(LETTERS[:len(options)]),
                    gold=_answer_index(record.get("answer"), "answer", len(options)),
                    extra=record)


def parse_row(task: str, record: dict, position: int, cop_base: int = 0) -> Question:
    if task == "medmcqa":
        return parse_medmcqa(record, position, cop_base)
    if task == "mmlu":
        return parse_mmlu(record, position)
    if task == "pubmedqa":
        return parse_pubmedqa(record, position)
    if task == "mcq":
        return parse_mcq(record, position)
    raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
