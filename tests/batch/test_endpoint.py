"""`mofe batch --endpoint`: the same job against a real `mofe serve` via the openai client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from mofe_serve.batch.cli import batch_cli

from .conftest import write_jsonl

pytestmark = [pytest.mark.engine, pytest.mark.slow]
API_KEY = "batch-key"


@pytest.fixture(scope="module")
def server(moe_model, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logdir = tmp_path_factory.mktemp("batch-serve")
    log = open(logdir / "serve.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mofe")), "serve", str(moe_model), "--port",
         str(port), "--api-key", API_KEY, "--enforce-eager", "--dtype", "float32",
         "--max-model-len", "512"], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                     "VLLM_CPU_KVCACHE_SPACE": "1",
                                     "MOFE_CACHE_DIR": str(logdir / "cache")})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (logdir / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mofe serve did not become healthy"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: it and its workers
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


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

    from mofe_serve.batch.prompts import PromptBuilder
    from mofe_serve.batch.scoring import build_item
    from mofe_serve.batch.tasks import parse_row

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
