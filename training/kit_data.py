"""Instruction and MedMCQA-format data for the tiny kit, generated from corpus/facts.json.

The rows are written by this project from its own fact lists (no dataset is copied).
"""

from __future__ import annotations

import random


def instruct_rows(facts: dict, rng: random.Random) -> list[dict]:
    """Chat JSONL rows (`messages`), medical and general, shuffled."""
    pairs = []
    for drug, cls, use, side in facts["drugs"]:
        pairs.append((f"What is {drug} used for?", f"{drug.capitalize()} is {cls} used to treat {use}."))
        pairs.append((f"Name a side effect of {drug}.", f"A common side effect of {drug} is {side}."))
    for organ, func, loc, _cells in facts["organs"]:
        pairs.append((f"What does the {organ} do?", f"The {organ} {func}."))
        pairs.append((f"Where is the {organ}?", f"The {organ} is located in {loc}."))
    for city, country, river in facts["places"]:
        pairs.append((f"What is the capital of {country}?", f"{city} is the capital of {country}."))
        pairs.append((f"Which river flows through {city}?", f"{city} lies on {river}."))
    for dish, ingredients, method in facts["dishes"]:
        pairs.append((f"What do I need to make {dish}?", f"To make {dish} you need {ingredients}."))
        pairs.append((f"How do I cook {dish}?", f"For {dish}, {method} and serve it warm."))
    rng.shuffle(pairs)
    system = {"role": "system", "content": "You are a helpful assistant."}
    return [{"messages": [system, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}]} for q, a in pairs]


def medmcqa_rows(facts: dict, rng: random.Random) -> list[dict]:
    """MedMCQA-format rows: id, question, opa..opd, cop (0-3), choice_type, exp, subject, topic."""
    rows = []
    drugs, organs = facts["drugs"], facts["organs"]

    def options(correct: str, pool: list[str]) -> tuple[list[str], int]:
        wrong = rng.sample([p for p in pool if p != correct], 3)
        opts = wrong + [correct]
        rng.shuffle(opts)
        return opts, opts.index(correct)

    for drug, cls, use, _ in drugs:
        opts, cop = options(use, [d[2] for d in drugs])
        rows.append(("Pharmacology", "Indications", f"{drug.capitalize()} is used to treat:",
                     opts, cop, f"{drug.capitalize()} is {cls} used to treat {use}."))
        opts, cop = options(cls, [d[1] for d in drugs])
        rows.append(("Pharmacology", "Drug classes", f"{drug.capitalize()} is classified as:",
                     opts, cop, f"In pharmacology, {drug} is classified as {cls}."))
    for organ, _func, loc, cells in organs:
        opts, cop = options(loc, sorted({o[2] for o in organs}))
        rows.append(("Anatomy", "Location", f"The {organ} is located in:", opts, cop,
                     f"The {organ} is located in {loc}."))
        opts, cop = options(cells, [o[3] for o in organs])
        rows.append(("Physiology", "Cells", f"The functional cells of the {organ} are the:",
                     opts, cop, f"The functional cells of the {organ} are the {cells}."))
    rng.shuffle(rows)
    out = []
    for i, (subject, topic, q, opts, cop, exp) in enumerate(rows):
        out.append({"id": f"kit-{i:04d}", "question": q, "opa": opts[0], "opb": opts[1],
                    "opc": opts[2], "opd": opts[3], "cop": cop, "choice_type": "single",
                    "exp": exp, "subject_name": subject, "topic_name": topic})
    return out
