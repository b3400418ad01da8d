"""`mofe batch --endpoint`: the same job against a real `mofe serve` via the openai client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve.server_proc import MofeServer  # tests/ is on sys.path (rootdir conftest)

from mofe_batch.cli import batch_cli

from .conftest import write_jsonl

pytestmark = [pytest.mark.engine, pytest.mark.slow]
API_KEY = "batch-key"


@pytest.fixture(scope="module")
def server(moe_model, tmp_path_factory):
    """`mofe serve` through the suite's one server harness (no VLLM_CPU_KVCACHE_SPACE)."""
    logdir = tmp_path_factory.mktemp("batch-serve")
    server = MofeServer(moe_model, logdir / "serve.log", api_key=API_KEY,
                        extra=["--enforce-eager", "--dtype", "float32", "--max-model-len", "512"],
                        env={"MOFE_CACHE_DIR": str(logdir / "cache")})
    try:
        server.wait_ready(timeout=300)
        yield server.base_url
    finally:
        leftovers = server.stop()
    assert not leftovers, f"unclean shutdown after SIGTERM: {leftovers}"


def test_endpoint_scores_match_offline_engine(server, moe_model, vllm_scorer, medmcqa_rows,
                                              tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", medmcqa_rows[:24])
    out = tmp_path / "remote.jsonl"
    result = CliRunner().invoke(batch_cli, [
        str(moe_model), "--task", "medmcqa", "--input", str(src), "--output", str(out),
        "--endpoint", server, "--api-key", API_KEY, "--concurrency", "4",
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
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["backend"] == "endpoint" and report["overall"]["n"] == 24
    assert report["overall"]["expert_share"] is None  # a shared server: not attributed


def test_endpoint_rejects_a_wrong_api_key(server, moe_model, medmcqa_rows, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", medmcqa_rows[:2])
    result = CliRunner().invoke(batch_cli, [
        str(moe_model), "--task", "medmcqa", "--input", str(src), "--output",
        str(tmp_path / "o.jsonl"), "--endpoint", server, "--api-key", "wrong",
        "--no-progress"])
    assert result.exit_code != 0
    assert "401" in repr(result.exception) or "401" in result.output
