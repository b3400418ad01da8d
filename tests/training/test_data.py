"""Data formats -> chat messages, loss masking on prompt tokens, malformed rows by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import DataConfig
from training.data import DataError, encode, load_data, to_messages


@pytest.fixture(scope="module")
def tokenizer(kit: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(kit / "tokenizer")


def test_alpaca_medmcqa_mmlu_become_instructions():
    alpaca = to_messages({"instruction": "Define fever.", "input": "Adults", "output": "A high "
                          "temperature."}, "alpaca")
    assert alpaca == [{"role": "user", "content": "Define fever.\n\nAdults"},
                      {"role": "assistant", "content": "A high temperature."}]
    med = to_messages({"question": "Which organ makes insulin?", "opa": "Liver",
                       "opb": "Pancreas", "opc": "Lung", "opd": "Skin", "cop": 1,
                       "exp": "Beta cells."}, "medmcqa")
    assert "B. Pancreas" in med[0]["content"] and med[1]["content"] == "B. Pancreas\nBeta cells."
    mmlu = to_messages({"question": "2+2?", "subject": "math", "choices": ["1", "2", "3", "4"],
                        "answer": 3}, "mmlu")
    assert mmlu[1]["content"] == "D. 4"


def test_loss_only_on_assistant_tokens(tokenizer):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where is the heart?"},
            {"role": "assistant", "content": "In the thorax."}]
    ex = encode(msgs, tokenizer, max_length=128)
    labelled = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100]
    assert tokenizer.decode(labelled).startswith("In the thorax.")
    assert tokenizer.eos_token in tokenizer.decode(labelled)
    prompt_len = ex["labels"].index(next(lab for lab in ex["labels"] if lab != -100))
    assert "Where is the heart?" in tokenizer.decode(ex["input_ids"][:prompt_len])
    # truncation that leaves no answer token drops the example
    assert encode(msgs, tokenizer, max_length=8) is None


def test_malformed_row_reported_with_file_and_line(tmp_path: Path, tokenizer):
    path = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
    rows = [json.dumps(good), json.dumps(good), '{"messages": [{"role": "user"}]}', "{oops",
            json.dumps(good), json.dumps(good)]
    path.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(train=[{"path": str(path)}], eval_fraction=0.25)
    with pytest.raises(DataError, match=rf"{path}:3: malformed chat row"):
        load_data(cfg, tokenizer, seed=0)
    cfg = DataConfig(train=[{"path": str(path)}], eval_fraction=0.25, skip_malformed=True)
    data = load_data(cfg, tokenizer, seed=0)
    assert data.skipped == {str(path): 2}
    assert (len(data.train), len(data.eval)) == (3, 1)
    assert len(data.file_hashes[str(path)]) == 64


def test_medmcqa_kit_file_loads(kit: Path, tokenizer):
    cfg = DataConfig(train=[{"path": str(kit / "data" / "medmcqa.jsonl"), "format": "medmcqa"}])
    data = load_data(cfg, tokenizer, seed=0)
    assert len(data.train) + len(data.eval) == sum(
        1 for line in (kit / "data" / "medmcqa.jsonl").open() if line.strip())


def test_text_rows_train_on_every_token(tmp_path: Path, tokenizer):
    """`format: text` (continued pretraining): no chat template, every token is a label."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                            ["The liver makes bile.", "Paris lies on the Seine."]))
    cfg = DataConfig(train=[{"path": str(path), "format": "text"}], eval_fraction=0.0)
    data = load_data(cfg, tokenizer, seed=0)
    assert len(data.train) == 2
    for ex in data.train:
        assert ex["labels"] == ex["input_ids"]
        assert ex["input_ids"][-1] == tokenizer.eos_token_id
        assert "<|user|>" not in tokenizer.decode(ex["input_ids"])
    assert {tokenizer.decode(ex["input_ids"][:-1]) for ex in data.train} == {
        "The liver makes bile.", "Paris lies on the Seine."}
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: malformed text row: field 'text'"):
        load_data(cfg, tokenizer, seed=0)
