"""Instruction data: chat / Alpaca / MedMCQA / MMLU JSONL -> chat messages -> masked SFT examples.

Every row becomes a list of chat messages; the tokenizer's chat template renders it and the
loss is computed on assistant turns only (prompt tokens get label -100). The `text` format
is plain text for continued pretraining: no template, the loss on every token. A malformed row is
reported as FILE:LINE with the reason; with `data.skip_malformed: true` it is skipped and
counted instead.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .config import DataConfig, DataFile

LETTERS = "ABCD"


class DataError(ValueError):
    """A data file or row is unusable; the message names the file and line."""


@dataclass
class LoadedData:
    train: list[dict]
    eval: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)  # file -> malformed rows skipped
    file_hashes: dict[str, str] = field(default_factory=dict)  # file -> sha256


def _text(row: dict, key: str, optional: bool = False) -> str:
    value = row.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise ValueError(f"field {key!r} must be a non-empty string")
    return value


def to_messages(row: object, fmt: str) -> list[dict]:
    """One JSON row in format `fmt` -> chat messages (the last one is the assistant's)."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if fmt == "chat":
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("field 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] needs a role (system/user/assistant) and "
                                 "string content")
        if msgs[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if fmt == "alpaca":
        prompt = _text(row, "instruction")
        extra = _text(row, "input", optional=True)
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        return [{"role": "user", "content": prompt},
                {"role": "assistant", "content": _text(row, "output")}]
    if fmt == "medmcqa":
        options = [_text(row, k) for k in ("opa", "opb", "opc", "opd")]
        return _mcq(_text(row, "question"), options, row.get("cop"),
                    _text(row, "exp", optional=True))
    if fmt == "mmlu":
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) != 4 or not all(
                isinstance(c, str) for c in choices):
            raise ValueError("field 'choices' must be a list of 4 strings")
        answer = row.get("answer")
        if isinstance(answer, str) and answer in LETTERS:
            answer = LETTERS.index(answer)
        return _mcq(_text(row, "question"), choices, answer, "")
    raise ValueError(f"unknown data format {fmt!r}")


def _mcq(question: str, options: list[str], answer: object, explanation: str) -> list[dict]:
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer <= 3:
        raise ValueError(f"answer index must be an integer 0-3, got {answer!r}")
    lines = [question] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    lines.append("Answer with the letter of the correct option.")
    reply = f"{LETTERS[answer]}. {options[answer]}"
    if explanation.strip():
        reply += f"\n{explanation.strip()}"
    return [{"role": "user", "content": "\n".join(lines)},
            {"role": "assistant", "content": reply}]


def to_text(row: object) -> str:
    """One `text` row -> its text."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    return _text(row, "text")


def read_rows(spec: DataFile, skip_malformed: bool) -> tuple[list, int]:
    """Messages (or texts, for the `text` format) of every row of one file, and the number
    of malformed rows skipped."""
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    out, skipped = [], 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(to_text(row) if spec.format == "text"
                           else to_messages(row, spec.format))
            except (json.JSONDecodeError, ValueError) as exc:
                if not skip_malformed:
                    raise DataError(f"{path}:{lineno}: malformed {spec.format} row: {exc} "
                                    "(set data.skip_malformed: true to skip such rows)") from None
                skipped += 1
            if spec.limit and len(out) >= spec.limit:
                break
    if not out:
        raise DataError(f"{path}: no usable rows")
    return out, skipped


def encode(messages: list[dict], tokenizer, max_length: int) -> dict | None:
    """Token ids with labels on assistant turns only; None when truncation leaves no label."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []  # character ranges of assistant turns (content plus end-of-turn tokens)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                               add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(upto) or not upto.startswith(prefix):
            raise DataError("the chat template does not render conversations incrementally; "
                            "cannot find the assistant turns to train on")
        spans.append((len(prefix), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True,
                    truncation=True, max_length=max_length)
    labels = [tok if any(s <= start < e for s, e in spans) else -100
              for tok, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]
    if all(label == -100 for label in labels):
        return None
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": labels}


def encode_text(text: str, tokenizer, max_length: int) -> dict:
    """Token ids of a plain text (BOS/EOS as the tokenizer adds them, then EOS if it did
    not), every token a label."""
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    if tokenizer.eos_token_id is not None and ids[-1:] != [tokenizer.eos_token_id] \
            and len(ids) < max_length:
        ids = ids + [tokenizer.eos_token_id]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_data(cfg: DataConfig, tokenizer, seed: int) -> LoadedData:
    result = LoadedData([], [])

    def load(specs: list[DataFile]) -> list[dict]:
        examples = []
        for spec in specs:
            rows, skipped = read_rows(spec, cfg.skip_malformed)
            result.file_hashes[spec.path] = file_sha256(Path(spec.path))
            if skipped:
                result.skipped[spec.path] = skipped
            if spec.format == "text":
                examples += [encode_text(text, tokenizer, cfg.max_length) for text in rows]
                continue
            for msgs in rows:
                if cfg.system_prompt and msgs[0]["role"] != "system":
                    msgs = [{"role": "system", "content": cfg.system_prompt}, *msgs]
                ex = encode(msgs, tokenizer, cfg.max_length)
                if ex is not None:
                    examples.append(ex)
        return examples

    train = load(cfg.train)
    if cfg.eval:
        result.train, result.eval = train, load(cfg.eval)
    else:
        random.Random(seed).shuffle(train)  # held-out split fixed by the seed
        n_eval = max(1, round(len(train) * cfg.eval_fraction)) if cfg.eval_fraction else 0
        result.train, result.eval = train[n_eval:], train[:n_eval]
    if not result.train:
        raise DataError("no training examples left after the eval split")
    return result
