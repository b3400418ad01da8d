"""`mofe batch --endpoint`: the same job against a real `mofe serve` via the openai client.

The server is the session's shared one (tests/conftest.py), serving the same test model as
the offline engine (`vllm_scorer`), so their scores must agree. Its prefix caching is off, so
each row's routing (per-request summaries, summed over its options) is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mofe_batch.cli import batch_cli
from training.test_models import DOMAINS, NUM_LAYERS, TOP_K

from .conftest import write_jsonl

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_endpoint_scores_match_offline_engine(mofe_server, tiny_mofe, vllm_scorer,
                                              medmcqa_rows, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", medmcqa_rows[:24])
    out = tmp_path / "remote.jsonl"
    result = CliRunner().invoke(batch_cli, [
        str(tiny_mofe), "--task", "medmcqa", "--input", str(src), "--output", str(out),
        "--endpoint", mofe_server.base_url, "--api-key", mofe_server.api_key, "--concurrency", "4",
        "--max-model-len", "512", "--no-progress"])
    assert result.exit_code == 0, result.output
    remote = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(remote) == 24

    from mofe_batch.prompts import PromptBuilder
    from mofe_batch.scoring import build_item
    from mofe_batch.tasks import parse_row

    builder = PromptBuilder("medmcqa")
    for i, row in enumerate(medmcqa_rows[:24]):
        q = parse_row("medmcqa", row, i + 1)
        item = build_item(vllm_scorer.tokenizer, builder.context(q), builder.continuations(q),
                          vllm_scorer.max_len)
        offline = vllm_scorer.score([item])[0]
        assert list(remote[q.id]["loglikelihoods"].values()) == pytest.approx(offline, abs=1e-3)
        # Exact per question: one request per option, each forwarding context + option.
        routed = remote[q.id]["routed_tokens"]
        assert set(routed) == set(DOMAINS)
        sent = sum(len(item.context) + len(c) for c in item.continuations)
        assert sum(routed.values()) == NUM_LAYERS * TOP_K * sent
        assert sum(remote[q.id]["expert_share"].values()) == pytest.approx(1.0)
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["backend"] == "endpoint" and report["overall"]["n"] == 24
    assert report["routing_granularity"].startswith("per question")
    assert sum(report["overall"]["expert_share"].values()) == pytest.approx(1.0)


def test_endpoint_rejects_a_wrong_api_key(mofe_server, tiny_mofe, medmcqa_rows, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", medmcqa_rows[:2])
    result = CliRunner().invoke(batch_cli, [
        str(tiny_mofe), "--task", "medmcqa", "--input", str(src), "--output",
        str(tmp_path / "o.jsonl"), "--endpoint", mofe_server.base_url, "--api-key", "wrong",
        "--no-progress"])
    assert result.exit_code != 0
    assert "401" in repr(result.exception) or "401" in result.output
