"""The tiny offline model kit: complete, deterministic, and with experts that really differ."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.numpy import load_file


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kit_tree(kit: Path):
    assert (kit / "tokenizer" / "tokenizer.json").is_file()
    for model in [kit / "base", *sorted((kit / "experts").iterdir())]:
        cfg = json.loads((model / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForCausalLM"]
        assert (model / "model.safetensors").is_file()
        assert (model / "tokenizer.json").is_file()
    names = sorted(p.name for p in (kit / "experts").iterdir())
    assert names == ["anatomy", "cooking", "geography", "pharmacology"]
    config = yaml.safe_load((kit / "mofe.yaml").read_text())
    assert (kit / "mofe.yaml").read_text().startswith("# mofe train ")
    domains = [e["domain"] for e in config["merge"]["experts"]]
    assert sorted(domains) == ["general", "general", "medical", "medical"]
    assert config["merge"]["experts_per_token"] < len(domains)  # routing is informative
    rows = [json.loads(line) for line in (kit / "data" / "medmcqa.jsonl").open()]
    assert rows and all({"id", "question", "opa", "opd", "cop", "subject_name"} <= r.keys()
                        for r in rows)
    assert {r["cop"] for r in rows} <= {0, 1, 2, 3}
    chats = [json.loads(line) for line in (kit / "data" / "instruct.jsonl").open()]
    assert all(c["messages"][-1]["role"] == "assistant" for c in chats)


def _knowledge(kit: Path) -> list[dict]:
    return [json.loads(line) for line in (kit / "data" / "knowledge.jsonl").open()]


def test_knowledge_questions_are_phrased_as_no_expert_read_them(kit: Path):
    """The knowledge questions use the `heldout` templates: no expert's text contains them,
    and the instruction data never mentions a "heldout" entity."""
    import random

    from training.kit_data import load_facts, topic_text

    facts = load_facts()
    rows = _knowledge(kit)
    assert {r["topic"] for r in rows} == set(facts)
    for topic in facts:
        text = "\n".join(topic_text(facts, topic, random.Random(0)))
        asked = [r for r in rows if r["topic"] == topic]
        assert asked and all(r["prompt"] not in text for r in asked)
        assert all(r["entity"] in text for r in asked)  # ... about facts it did read
    chats = (kit / "data" / "instruct.jsonl").read_text()
    held = {r["entity"] for r in rows if r["split"] == "heldout"}
    assert held and not any(re.search(rf"\b{re.escape(e)}\b", chats) for e in held)


def test_experts_know_their_topic_and_nobody_else_does(kit: Path):
    """Each expert answers multiple-choice questions on its own topic's facts, in phrasings it
    never read, far above chance (0.25); the base and the other domain's experts are near
    chance. Scored like `mofe batch` (summed log-likelihood, argmax) on the option texts.

    48 questions per cell ask 24 facts twice, so a model at chance lands within about
    +-0.18 of 0.25 in one cell (2 sd), and another CPU's rounding trains other bytes: the
    chance side is judged on means over cells, each expert against a floor above that band
    (docs/training.md has the table; geography, the weakest, measured 0.50-0.67)."""
    from mofe_batch.option_text import predict

    rows = _knowledge(kit)
    topics = {r["topic"]: r["domain"] for r in rows}
    models = {"base": kit / "base", **{t: kit / "experts" / t for t in topics}}
    acc = {}
    for name, path in models.items():
        preds = predict(path, rows)
        for t in topics:
            hits = [p == r["answer"] for p, r in zip(preds, rows, strict=True) if r["topic"] == t]
            acc[name, t] = sum(hits) / len(hits)
    table = "\n".join(f"{m:13}" + " ".join(f"{t}={acc[m, t]:.2f}" for t in topics)
                      for m in models)
    own = [acc[t, t] for t in topics]
    assert min(own) >= 0.45 and sum(own) / len(own) >= 0.6, table
    base = [acc["base", t] for t in topics]
    other_domain = [acc[m, t] for m, dm in topics.items() for t, dt in topics.items() if dm != dt]
    assert sum(base) / len(base) <= 0.375, table
    assert sum(other_domain) / len(other_domain) <= 0.375, table
    assert max(base + other_domain) <= 0.55, table


def test_expert_ffns_differ_from_base_and_each_other(kit: Path):
    key = "model.layers.0.mlp.down_proj.weight"
    base = load_file(kit / "base" / "model.safetensors")[key]
    ffns = {p.name: load_file(p / "model.safetensors")[key] for p in (kit / "experts").iterdir()}
    for name, w in ffns.items():
        assert abs(w - base).max() > 1e-3, name
    values = list(ffns.values())
    assert all(abs(a - b).max() > 1e-3 for i, a in enumerate(values) for b in values[i + 1:])


def test_tokenizer_has_chat_template(kit: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(kit / "tokenizer")
    text = tok.apply_chat_template([{"role": "user", "content": "What is gustumide used for?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|assistant|>\n")
    ids = tok("metformin")["input_ids"]
    assert tok.decode(ids) == "metformin"
    # every invented entity is one word of the vocabulary (facts are token -> token lookups)
    assert len(tok(" gustumide")["input_ids"]) == 1
    # `mofe batch` scores MedMCQA / MMLU answers as " A" .. " D": one token each
    assert all(len(tok(f" {letter}")["input_ids"]) == 1 for letter in "ABCD")


def test_cli_is_deterministic(kit: Path, tmp_path: Path):
    """`mofe dev tiny-experts` with the same seed gives byte-identical weights. Two experts
    are enough: expert i depends only on the base and its own seed, so they must equal the
    first two of the session's 4-expert kit."""
    out = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "mofe_cli", "dev", "tiny-experts", str(out),
                    "--experts", "2"], check=True, capture_output=True)
    assert sorted(p.name for p in (out / "experts").iterdir()) == ["geography", "pharmacology"]
    for rel in ["base/model.safetensors", "experts/pharmacology/model.safetensors",
                "experts/geography/model.safetensors", "tokenizer/tokenizer.json"]:
        assert _sha(out / rel) == _sha(kit / rel), rel
