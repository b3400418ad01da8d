"""The kit's text and data, generated from corpus/facts.json (synthetic facts, no dataset copied).

facts.json holds topics (pharmacology, anatomy: medical; geography, cooking: general). Each
topic has relations (e.g. drug -> condition it treats) with a pool of values and three kinds
of phrasing, and two disjoint sets of invented entities:

- `entities`: the facts an expert of that topic learns, stated with the `train` templates;
- `fillers`: the base's own entities. The base reads every template (train, heldout and
  instruct) about fillers only, so it knows the language and the question forms but none of
  the experts' facts. It also reads `mentions` (sentences that name an entity and state no
  fact) of every entity, so the experts' entity names are words it knows.

From them:
- `topic_text`: an expert's pretraining text (its entities, `train` templates only);
- `base_text`: the base's text (fillers, all templates);
- `knowledge_rows`: multiple-choice questions on every expert fact in the `heldout` phrasings
  (never in an expert's text), in `mofe batch --task mcq` row format plus a `prompt` for
  option-text scoring (mofe_batch.option_text);
- `instruct_rows`: chat rows for instruction tuning on the even-numbered entities only, so
  that the odd-numbered ones (split "heldout") stay unseen by tuning: their answers can only
  come from the experts' FFNs;
- `medmcqa_rows`: the medical facts as MedMCQA-format rows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"


def load_facts() -> dict:
    return json.loads((CORPUS / "facts.json").read_text())["topics"]


def _fill(template: str, entity: str, value: str) -> str:
    cap = entity[0].upper() + entity[1:]
    return template.replace("{E}", cap).replace("{e}", entity).replace("{v}", value)


def _facts(topic: dict, key: str = "entities"):
    """(entity index, entity, relation name, relation spec, value) for every fact."""
    rels = list(topic["relations"])
    for i, row in enumerate(topic[key]):
        for r, value in zip(rels, row[1:], strict=True):
            yield i, row[0], r, topic["relations"][r], value


def _shuffled_text(lines: list[str], rng: random.Random, repeats: int) -> list[str]:
    """`repeats` shuffles of `lines`, concatenated: windows cut from it mix facts differently."""
    out = []
    for _ in range(repeats):
        block = list(lines)
        rng.shuffle(block)
        out += block
    return out


def topic_text(facts: dict, topic: str, rng: random.Random, repeats: int = 4) -> list[str]:
    lines = [_fill(t, e, v) for _, e, _, rel, v in _facts(facts[topic]) for t in rel["train"]]
    return _shuffled_text(lines, rng, repeats)


def base_text(facts: dict, rng: random.Random, repeats: int = 2) -> list[str]:
    lines = []
    for topic in facts.values():
        for key in ("entities", "fillers"):  # names without facts
            lines += [_fill(t, row[0], "") for row in topic[key] for t in topic["mentions"]]
        for _, e, _, rel, v in _facts(topic, "fillers"):
            lines += [_fill(t, e, v) for t in rel["train"] + rel["heldout"]]
            q, a = rel["instruct"]
            lines.append(f"{_fill(q, e, v)} {_fill(a, e, v)}")
    return _shuffled_text(lines, rng, repeats)


def tokenizer_text(facts: dict) -> list[str]:
    """Every phrasing of every entity once: the tokenizer sees all names and values."""
    lines = []
    for topic in facts.values():
        for key in ("entities", "fillers"):
            for _, e, _, rel, v in _facts(topic, key):
                lines += [_fill(t, e, v) for t in rel["train"] + rel["heldout"] + rel["instruct"]]
                lines.append(_letter_question(e, rel, v))
    return lines


def _asked(template: str, entity: str, value: str) -> tuple[str, str]:
    """A `Question: ...\nAnswer: {v}` template as (prompt: the text the answer follows,
    question: its question line without the `Question: ` label)."""
    prompt = _fill(template, entity, value).rsplit(value, 1)[0].rstrip()
    return prompt, prompt.split("\n")[0].removeprefix("Question: ")


def _letter_question(entity: str, rel: dict, value: str) -> str:
    """The fact as a lettered multiple-choice question with its answer letter, the format
    `mofe batch` scores (MedMCQA, MMLU): so " A" .. " D" are single tokens."""
    values = rel["values"]
    start = values.index(value)
    options = [values[(start + k) % len(values)] for k in range(4)]
    shift = len(entity) % 4  # the gold letter varies from fact to fact
    options = options[-shift:] + options[:-shift] if shift else options
    letters = "ABCD"
    question = _asked(rel["heldout"][0], entity, value)[1]
    listed = "".join(f"{letters[k]}. {o}\n" for k, o in enumerate(options))
    return f"Question: {question}\n{listed}Answer: {letters[options.index(value)]}"


def split_of(index: int) -> str:
    """Even-numbered entities are in the instruction data ("tune"), odd ones never ("heldout")."""
    return "tune" if index % 2 == 0 else "heldout"


def _options(correct: str, pool: list[str], rng: random.Random) -> tuple[list[str], int]:
    opts = rng.sample([p for p in pool if p != correct], 3) + [correct]
    rng.shuffle(opts)
    return opts, opts.index(correct)


def knowledge_rows(facts: dict, rng: random.Random) -> list[dict]:
    """Every expert fact asked in each `heldout` phrasing, 4 options (the other 3 drawn from
    the same relation's values). `prompt` is the text the option follows (after a space)."""
    rows = []
    for name, topic in facts.items():
        for i, e, r, rel, v in _facts(topic):
            for k, template in enumerate(rel["heldout"]):
                prompt, question = _asked(template, e, v)
                opts, answer = _options(v, rel["values"], rng)
                rows.append({"id": f"{name}-{i:02d}-{r}-{k}", "question": question,
                             "options": opts, "answer": answer, "subject": topic["subject"],
                             "domain": topic["domain"], "topic": name, "relation": r,
                             "entity": e, "split": split_of(i), "prompt": prompt})
    return rows


def instruct_rows(facts: dict, rng: random.Random) -> list[dict]:
    """Chat rows (`messages`) for the "tune" entities of every topic, shuffled."""
    pairs = []
    for topic in facts.values():
        for i, e, _, rel, v in _facts(topic):
            if split_of(i) == "tune":
                q, a = rel["instruct"]
                pairs.append((_fill(q, e, v), _fill(a, e, v)))
    rng.shuffle(pairs)
    system = {"role": "system", "content": "You are a helpful assistant."}
    return [{"messages": [system, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}]} for q, a in pairs]


def medmcqa_rows(facts: dict, rng: random.Random) -> list[dict]:
    """MedMCQA-format rows on the medical facts: id, question, opa..opd, cop (0-3),
    choice_type, exp, subject_name, topic_name."""
    rows = []
    for topic in facts.values():
        if topic["domain"] != "medical":
            continue
        for _i, e, r, rel, v in _facts(topic):
            question = _asked(rel["heldout"][0], e, v)[1]
            opts, cop = _options(v, rel["values"], rng)
            rows.append((topic["subject"], r, question, opts, cop,
                         _fill(rel["train"][0], e, v)))
    rng.shuffle(rows)
    return [{"id": f"kit-{i:04d}", "question": q, "opa": o[0], "opb": o[1], "opc": o[2],
             "opd": o[3], "cop": cop, "choice_type": "single", "exp": exp,
             "subject_name": subject, "topic_name": topic}
            for i, (subject, topic, q, o, cop, exp) in enumerate(rows)]
