"""Input formats, row validation, cop convention, prompts and report maths (no model)."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from mofe_batch import readers
from mofe_batch.cli import batch_cli
from mofe_batch.config import BatchConfig, pre_pass
from mofe_batch.output import repair_and_read_ids
from mofe_batch.prompts import PromptBuilder
from mofe_batch.questions import Skips, iter_questions
from mofe_batch.report import wilson
from mofe_batch.tasks import parse_row

from .conftest import write_jsonl

ROW = {"id": "q1", "question": "Which drug is a beta blocker?", "opa": "propranolol",
       "opb": "aspirin", "opc": "insulin", "opd": "heparin", "cop": 0,
       "subject_name": "Pharmacology", "topic_name": "Drugs"}


def _questions(path, task="medmcqa", cop_base=0, limit=None):
    cfg = BatchConfig(model="m", task=task, input=path, output=path.with_suffix(".out"),
                      limit=limit)
    skips = Skips(path, readers.position_label(path))
    return list(iter_questions(cfg, cop_base, skips, strict=False)), skips.as_dict()


def test_medmcqa_prompt_is_lm_eval_doc_to_text():
    q = parse_row("medmcqa", ROW, 1)
    # lm-eval 0.4.13 tasks/medmcqa/utils_medmcqa.py doc_to_text, target " " + letter
    assert PromptBuilder("medmcqa").context(q) == (
        "Question: Which drug is a beta blocker?\nChoices:\nA. propranolol\nB. aspirin\n"
        "C. insulin\nD. heparin\nAnswer:")
    assert PromptBuilder("medmcqa").continuations(q) == [" A", " B", " C", " D"]


def test_mmlu_and_pubmedqa_prompts():
    q = parse_row("mmlu", {"question": " What is 2+2? ", "choices": ["1", "2", "3", "4"],
                           "answer": 3, "subject": "college_medicine"}, 1)
    assert PromptBuilder("mmlu").context(q) == (
        "The following are multiple choice questions (with answers) about college medicine."
        "\n\nWhat is 2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    p = parse_row("pubmedqa", {"QUESTION": "Does it work?", "CONTEXTS": ["One.", "Two."],
                               "final_decision": "maybe"}, 1)
    assert PromptBuilder("pubmedqa").context(p) == (
        "Abstract: One.\nTwo.\nQuestion: Does it work?\nAnswer:")
    assert p.gold == 2 and PromptBuilder("pubmedqa").continuations(p) == [" yes", " no",
                                                                           " maybe"]


def test_shots_are_seeded_per_question_and_exclude_the_question():
    dev = [parse_row("medmcqa", {**ROW, "id": f"d{i}", "question": f"Dev {i}?", "cop": i % 4},
                     i + 1) for i in range(6)]
    builder = PromptBuilder("medmcqa", shots=2, dev=dev, seed=7)
    q = parse_row("medmcqa", {**ROW, "id": "d3"}, 1)
    shots = builder.draw_shots(q)
    assert len(shots) == 2 and all(s.id != "d3" for s in shots)
    assert [s.id for s in PromptBuilder("medmcqa", shots=2, dev=dev, seed=7).draw_shots(q)] == \
        [s.id for s in shots]
    context = builder.context(q)
    first = shots[0]
    assert context.startswith(f"Question: {first.question}\n")
    assert f"Answer: {first.choices[first.gold]}\n\nQuestion:" in context
    assert context.endswith("D. heparin\nAnswer:")


def test_impossible_threads_are_refused_before_anything_is_written(tmp_path):
    import os

    src = write_jsonl(tmp_path / "in.jsonl", [ROW])
    cores = len(os.sched_getaffinity(0))
    result = CliRunner().invoke(batch_cli, [str(tmp_path / "no-model"), "--task", "medmcqa",
                                            "--input", str(src), "--output",
                                            str(tmp_path / "out.jsonl"), "--threads",
                                            str(cores + 1)])
    assert result.exit_code != 0
    assert f"--threads {cores + 1}: must be between 1 and the {cores} core(s)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_mmlu_shots_are_the_first_dev_rows_of_the_subject_as_lm_eval():
    """lm-eval's MMLU tasks use `sampler: first_n` over the subject's dev split: every
    question of a subject gets the same shots, so its prompts share one prefix."""
    def mmlu(i, subject, prefix="q"):
        return parse_row("mmlu", {"id": f"{prefix}{i}", "question": f"Q{i}?", "subject": subject,
                                  "choices": ["w", "x", "y", "z"], "answer": i % 4}, i + 1)

    dev = [mmlu(i, "anatomy" if i % 2 else "virology", "d") for i in range(8)]
    builder = PromptBuilder("mmlu", shots=3, dev=dev, seed=7)
    a, b = mmlu(0, "anatomy"), mmlu(1, "anatomy")
    assert [s.id for s in builder.draw_shots(a)] == ["d1", "d3", "d5"]
    head = ("The following are multiple choice questions (with answers) about anatomy.\n\n"
            "Q1?\nA. w\nB. x\nC. y\nD. z\nAnswer: B\n\n")
    assert builder.context(a).startswith(head)
    shared = builder.context(a)[:-len("Q0?\nA. w\nB. x\nC. y\nD. z\nAnswer:")]
    assert builder.context(b).startswith(shared)
    with pytest.raises(ValueError, match="has 4 labeled rows of subject 'anatomy'"):
        PromptBuilder("mmlu", shots=5, dev=dev).draw_shots(a)


def test_custom_template_from_text_and_file(tmp_path):
    q = parse_row("mcq", {"id": "x", "question": "Q?", "options": ["yes", "no", "n/a"],
                          "answer": "B"}, 1)
    assert q.gold == 1 and q.choices == ["A", "B", "C"]
    text = "{{ question }} {% for o in options %}({{ letters[loop.index0] }}) {{ o }} " \
           "{% endfor %}=>"
    assert PromptBuilder("mcq", text).context(q) == "Q? (A) yes (B) no (C) n/a =>"
    (tmp_path / "t.j2").write_text("[{{ subject }}] {{ question }}")
    assert PromptBuilder("mcq", str(tmp_path / "t.j2")).context(q) == "[unknown] Q?"


def test_all_formats_stream_the_same_questions(tmp_path, monkeypatch):
    rows = [{**ROW, "id": f"q{i}", "cop": i % 4, "question": f"Q {i}, with \"quotes\"\nand"}
            for i in range(25)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    (tmp_path / "in.json").write_text(json.dumps(rows, indent=1))
    with open(tmp_path / "in.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(ROW))
        w.writeheader()
        w.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=7)
    monkeypatch.setattr(readers, "_JSON_CHUNK", 64)  # force many partial-buffer refills
    expected = [(q.id, q.question, q.options, q.gold) for q in
                _questions(tmp_path / "in.jsonl")[0]]
    assert len(expected) == 25
    for name in ("in.json", "in.csv", "in.parquet"):
        got = [(q.id, q.question, q.options, q.gold) for q in _questions(tmp_path / name)[0]]
        assert got == expected, name
    assert [q.id for q in _questions(tmp_path / "in.jsonl", limit=4)[0]] == \
        ["q0", "q1", "q2", "q3"]


def test_malformed_rows_are_skipped_with_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        ROW,
        {**ROW, "id": "no-question", "question": None},
        "{not json",
        {**ROW, "id": "cop-range", "cop": 7},
        {**ROW, "id": "cop-type", "cop": "two"},
        {**ROW, "id": "empty-opt", "opc": "  "},
        {**ROW, "id": "list-opt", "opd": ["x"]},
        ROW,  # duplicate id q1
        {**ROW, "id": "ok2", "cop": "3"},
    ])
    questions, skips = _questions(path)
    assert [q.id for q in questions] == ["q1", "ok2"]
    assert skips["count"] == 7
    where = {e["where"].rsplit(" ", 1)[1]: e["reason"] for e in skips["examples"]}
    assert "missing field 'question'" in where["2"]
    assert "invalid JSON" in where["3"]
    assert "'cop' is 7, out of range" in where["4"]
    assert "must be an integer" in where["5"]
    assert "'opc' is empty" in where["6"]
    assert "'opd' must be a string" in where["7"]
    assert "duplicate id 'q1'" in where["8"]


def test_strict_fails_before_loading_a_model(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROW, {**ROW, "id": "x", "opb": None}])
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(batch_cli, ["/nonexistent/model", "--task", "medmcqa",
                                            "--input", str(path), "--output", str(out),
                                            "--strict"])
    assert result.exit_code == 1
    assert f"{path}:line 2: missing field 'opb'" in result.output
    assert not out.exists()


@pytest.mark.parametrize("cops,flag,base,warn", [
    ([0, 1, 2], "auto", 0, False), ([1, 2, 4], "auto", 1, False), ([1, 2, 3], "auto", 0, True),
    ([0, 4], "auto", 0, True), ([1, 2, 3], "1", 1, False)])
def test_cop_convention(tmp_path, cops, flag, base, warn):
    path = write_jsonl(tmp_path / "c.jsonl", [{**ROW, "id": str(i), "cop": c}
                                              for i, c in enumerate(cops)])
    result = pre_pass(path, "medmcqa", flag)
    assert result.cop_base == base and result.records == len(cops)
    assert ("WARNING" in result.cop_reason) == warn
    questions, skips = _questions(path, cop_base=base)
    assert all(q.gold == c - base for q, c in zip(questions, cops, strict=False))


def test_encode_pair_moves_context_whitespace_to_the_continuation(kit):
    from transformers import AutoTokenizer

    from mofe_batch.scoring import build_item, encode_pair

    tok = AutoTokenizer.from_pretrained(kit / "tokenizer")
    ctx, cont = encode_pair(tok, "Answer: ", "A")
    assert ctx == tok.encode("Answer:")
    assert ctx + cont == tok.encode("Answer: A")
    assert build_item(tok, "Answer: ", ["A", "B"]).continuations[0] == cont
    item = build_item(tok, "word " * 50 + "Answer:", [" A", " B"], max_len=20)
    assert item.truncated and len(item.context) + 1 <= 20


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert abs(lo - 0.2366) < 1e-4 and abs(hi - 0.7634) < 1e-4
    assert wilson(0, 0) == (0.0, 0.0)
    lo, hi = wilson(10, 10)
    assert abs(hi - 1.0) < 1e-9 and 0.69 < lo < 0.73


def test_torn_last_line_is_cut_on_resume(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "pred')
    assert repair_and_read_ids(out) == {"a", "b"}
    assert out.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    out.write_text("not ours\n{\"id\": \"a\"}\n")
    with pytest.raises(ValueError):
        repair_and_read_ids(out)


def test_a_long_template_text_is_not_taken_for_a_file_name():
    q = parse_row("medmcqa", ROW, 1)
    preamble = "A long preamble without any newline in it. " * 20  # > 255 bytes
    assert PromptBuilder("medmcqa", preamble + "{{ question }}").context(q) == \
        preamble + ROW["question"]
