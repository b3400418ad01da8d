"""`mofe batch` on every task format through the CLI (transformers backend, kit base model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mofe_batch.cli import batch_cli

from .conftest import write_jsonl

pytestmark = pytest.mark.slow


def _run(kit: Path, task: str, src: Path, out: Path, *extra: str) -> list[dict]:
    result = CliRunner().invoke(batch_cli, [
        str(kit / "base"), "--task", task, "--input", str(src), "--output", str(out),
        "--backend", "hf", "--dtype", "float32", "--no-progress", *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_mmlu_parquet_pubmedqa_and_mcq_with_shots(kit, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    mmlu = [{"question": f"Which organ filters blood? ({i})",
             "choices": ["kidney", "skin", "bone", "hair"], "answer": i % 4,
             "subject": "anatomy" if i % 2 else "college_medicine"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(mmlu), tmp_path / "mmlu.parquet")
    rows = _run(kit, "mmlu", tmp_path / "mmlu.parquet", tmp_path / "mmlu.jsonl")
    # no id column: ids are row positions; rows come out grouped by subject
    assert sorted(r["id"] for r in rows) == sorted(f"row-{i}" for i in range(1, 7))
    assert all(r["gold"] == "ABCD"[(int(r["id"][4:]) - 1) % 4] for r in rows)
    assert {r["subject"] for r in rows} == {"anatomy", "college_medicine"}

    pub = [{"id": f"p{i}", "question": "Does aspirin thin the blood?",
            "context": ["Aspirin inhibits platelets.", "Bleeding time rises."],
            "final_decision": ["yes", "no", "maybe"][i % 3]} for i in range(4)]
    rows = _run(kit, "pubmedqa", write_jsonl(tmp_path / "pub.jsonl", pub),
                tmp_path / "pub.out.jsonl")
    assert {r["gold"] for r in rows} == {"yes", "no", "maybe"}
    assert all(list(r["loglikelihoods"]) == ["yes", "no", "maybe"] for r in rows)

    dev = [{"id": f"d{i}", "question": f"Dev question {i}?", "options": ["a", "b", "c"],
            "answer": "ABC"[i % 3]} for i in range(5)]
    mcq = [{"id": f"m{i}", "question": f"Pick one {i}?", "options": ["x", "y", "z"],
            "answer": i % 3, "subject": "misc"} for i in range(4)]
    out = tmp_path / "mcq.jsonl"
    rows = _run(kit, "mcq", write_jsonl(tmp_path / "mcq_in.jsonl", mcq), out, "--shots", "2",
                "--dev", str(write_jsonl(tmp_path / "dev.jsonl", dev)), "--chat-template",
                "--report-png")
    assert len(rows) == 4 and all(list(r["loglikelihoods"]) == ["A", "B", "C"] for r in rows)
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["shots"] == 2 and report["chat_template"] is True
    assert report["subjects"]["misc"]["n"] == 4
    assert Path(str(out) + ".report.png").stat().st_size > 1000
