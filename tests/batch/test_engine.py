"""vLLM offline scoring of a tiny MoFE Mixtral: agreement with transformers, routing shares."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from mofe_batch.config import BatchConfig
from mofe_batch.prompts import PromptBuilder
from mofe_batch.runner import run_batch
from mofe_batch.scoring import build_item, rank
from mofe_batch.tasks import parse_row

from .conftest import write_jsonl

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _reference_loglikelihoods(model_dir: Path, items) -> list[list[float]]:
    """Direct transformers fp32: one forward per option over context + continuation."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for item in items:
            if item.single_token:  # one forward over the context scores every option
                logits = model(torch.tensor([item.context])).logits[0, -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                out.append([float(logprobs[c[0]]) for c in item.continuations])
                continue
            lls = []
            for cont in item.continuations:
                ids = torch.tensor([item.context + cont])
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
                start = len(item.context)
                lls.append(sum(float(logprobs[start - 1 + k, t]) for k, t in enumerate(cont)))
            out.append(lls)
    return out


def test_vllm_loglikelihoods_match_transformers(vllm_scorer, tiny_mofe, medmcqa_rows):
    builder = PromptBuilder("medmcqa")
    questions = [parse_row("medmcqa", r, i + 1) for i, r in enumerate(medmcqa_rows[:28])]
    tok = vllm_scorer.tokenizer
    letters = [build_item(tok, builder.context(q), builder.continuations(q), vllm_scorer.max_len)
               for q in questions]
    # Option texts as continuations: several tokens each, the prompt_logprobs path.
    texts = [build_item(tok, builder.context(q), [" " + o for o in q.options],
                        vllm_scorer.max_len) for q in questions[:4]]
    assert all(item.single_token for item in letters)
    assert not any(item.single_token for item in texts)
    items = letters + texts
    got = vllm_scorer.score(items)
    want = _reference_loglikelihoods(tiny_mofe, items)
    agree = 0
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=2e-3)
        agree += rank(g, ["A"] * len(g)).prediction == rank(w, ["A"] * len(w)).prediction
    assert agree == len(items)


def test_run_batch_writes_rows_reports_and_routing_shares(vllm_scorer, medmcqa_rows, tmp_path):
    rows = medmcqa_rows[:30] + [{**medmcqa_rows[0], "id": "bad", "cop": 9}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "res.jsonl"
    cfg = BatchConfig(model="tiny-moe", task="medmcqa", input=src, output=out,
                      chunk_size=4, report_png=True, progress=False, dtype="float32")
    report = run_batch(cfg, scorer=vllm_scorer, log=lambda m: None)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in medmcqa_rows[:30])
    assert report["skipped"]["count"] == 1 and report["scored_this_run"] == 30
    domains = {"medical", "general"}
    layers, top_k = 4, 2
    for r in results:
        assert set(r["expert_share"]) == domains
        assert sum(r["expert_share"].values()) == pytest.approx(1.0)
        assert r["correct"] == (r["prediction"] == r["gold"])
    # Every prompt token the engine computed was routed to top_k experts in every layer, and
    # nothing else (the engine's warm-up and the sampled token are not counted). The first
    # test scored the same questions, so their prompt blocks now come from the prefix cache.
    routed = sum(sum(r["routed_tokens"].values()) for r in results)
    computed = sum(r["computed_tokens"] for r in results)
    assert routed == pytest.approx(layers * top_k * computed)
    assert computed < sum(r["num_tokens"] for r in results)
    assert report["computed_tokens_this_run"] == computed
    subjects = {r["subject_name"] for r in medmcqa_rows[:30]}
    assert set(report["subjects"]) == subjects
    for s, block in report["subjects"].items():
        n = sum(1 for r in results if r["subject"] == s)
        assert block["n"] == n and block["ci95"][0] <= block["acc"] <= block["ci95"][1]
        assert sum(block["expert_share"].values()) == pytest.approx(1.0)
    md = Path(str(out) + ".report.md").read_text()
    assert "| subject | general | medical |" in md and "0-based" in md
    assert Path(str(out) + ".report.png").read_bytes()[:4] == b"\x89PNG"
    # A rerun resumes everything and scores nothing.
    again = run_batch(cfg, scorer=vllm_scorer, log=lambda m: None)
    assert again["resumed"] == 30 and again["scored_this_run"] == 0
    assert len(out.read_text().splitlines()) == 30


def test_per_question_routing_is_exact_per_row(vllm_scorer, medmcqa_rows, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", medmcqa_rows[:6])
    cfg = BatchConfig(model="tiny-moe", task="medmcqa", input=src, output=tmp_path / "o.jsonl",
                      routing="question", progress=False)
    report = run_batch(cfg, scorer=vllm_scorer, log=lambda m: None)
    assert report["routing_granularity"].startswith("per question")
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    shares = set()
    for r in rows:  # each row's own delta: 4 layers x top-2 x its computed prompt tokens
        assert sum(r["routed_tokens"].values()) == 4 * 2 * r["computed_tokens"]
        shares.add(round(r["expert_share"]["medical"], 6))
    assert len(shares) > 1  # shares really are per question, not one chunk's


def test_routing_counts_are_exact_when_prompts_share_a_long_prefix(vllm_scorer, medmcqa_rows,
                                                                   tmp_path):
    """Every prompt starts with the same preamble, longer than several KV blocks (the
    session engine uses block size 32) and than the CPU default block (128). Prefix caching
    is on: the preamble's whole blocks are computed once, by the first question, and read
    from the cache by the other seven. The documented rule: per layer, routed slots =
    top_k x computed tokens, where each prompt computes all but the whole KV blocks it
    shares with a prompt computed before it (here the questions run one after another:
    chunks of 2, each chunk's first prompt alone first)."""
    preamble = "You are a careful medical expert answering exam questions. " * 10
    template = preamble + "\nQuestion: {{ question }}\n" + \
        "{% for o in options %}{{ letters[loop.index0] }}. {{ o }}\n{% endfor %}Answer:"
    rows = [{**r, "subject_name": "Shared"} for r in medmcqa_rows[:8]]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.jsonl"
    (tmp_path / "t.j2").write_text(template)
    cfg = BatchConfig(model="tiny-moe", task="medmcqa", input=src, output=out, chunk_size=2,
                      template=str(tmp_path / "t.j2"), progress=False, dtype="float32")
    prefix_tokens = len(vllm_scorer.tokenizer(preamble)["input_ids"])
    assert prefix_tokens > 128  # longer than one block of any default size
    builder = PromptBuilder("medmcqa", template=str(tmp_path / "t.j2"))
    contexts = [build_item(vllm_scorer.tokenizer, builder.context(q), builder.continuations(q))
                .context for q in (parse_row("medmcqa", r, i + 1) for i, r in enumerate(rows))]
    block = vllm_scorer.block_size

    def cached(i: int) -> int:  # whole blocks shared with an earlier prompt (never the last
        # token: vLLM computes at least one)
        best = max(len(os.path.commonprefix([contexts[i], c])) for c in contexts[:i])
        return min(best, len(contexts[i]) - 1) // block * block

    expected_cached = [0] + [cached(i) for i in range(1, len(contexts))]
    preamble_blocks = len(os.path.commonprefix(contexts)) // block * block
    assert preamble_blocks >= 128 and min(expected_cached[1:]) >= preamble_blocks
    before = vllm_scorer.routing_snapshot()
    report = run_batch(cfg, scorer=vllm_scorer, log=lambda m: None)
    after = vllm_scorer.routing_snapshot()
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 8
    scored = sum(r["num_tokens"] for r in results)
    computed = sum(r["computed_tokens"] for r in results)
    assert [r["computed_tokens"] for r in sorted(results, key=lambda r: r["position"])] == \
        [len(c) - k for c, k in zip(contexts, expected_cached, strict=True)]
    assert computed == scored - sum(expected_cached)  # the preamble computed once
    top_k = 2
    per_layer = [sum(a) - sum(b) for a, b in zip(after, before, strict=True)]
    assert per_layer == [top_k * computed] * len(per_layer)
    routed = sum(sum(r["routed_tokens"].values()) for r in results)
    assert routed == pytest.approx(len(per_layer) * top_k * computed)
    assert report["prefix_caching"] is True
    assert report["routing_counts"].startswith("computed tokens")
    assert (report["prompt_tokens_this_run"], report["computed_tokens_this_run"]) == \
        (scored, computed)


def test_engine_computes_in_this_process_on_the_planned_cores(vllm_scorer, medmcqa_rows):
    """The offline engine runs in the test process (no engine-core or worker process) with
    the planned number of torch threads, every thread pinned to the planned cores; no core
    is held back for an API server."""
    import torch

    plan = vllm_scorer.cpu_plan
    assert plan is not None and plan.threads == len(plan.cpus) >= 1
    assert set(plan.cpus) | set(plan.shared) <= set(plan.allowed)
    if not plan.others:  # nothing else computing here: every core this process may use
        assert plan.cpus == plan.allowed
    item = build_item(vllm_scorer.tokenizer, "Question: which organ? Answer:", [" A", " B"])
    vllm_scorer.score([item] * 4)
    assert torch.get_num_threads() == plan.threads
    me = psutil.Process()
    # A multiprocess engine's core would be a child of this process; a session test server's
    # engine (tests/batch/test_endpoint.py) is its server's child, not ours.
    assert not [p for p in me.children(recursive=False) if _title(p).startswith("VLLM::")]
    for thread in me.threads():  # the OpenMP threads that ran the forward pass included
        assert os.sched_getaffinity(thread.id) <= set(plan.cpus)


def test_vllm_resume_with_other_settings_is_refused_before_scoring(vllm_scorer, tiny_mofe,
                                                                  medmcqa_rows, tmp_path):
    from mofe_batch.provenance import ProvenanceMismatch

    src = write_jsonl(tmp_path / "in.jsonl", medmcqa_rows[:4])
    out = tmp_path / "o.jsonl"
    cfg = BatchConfig(model=str(tiny_mofe), task="medmcqa", input=src, output=out,
                      progress=False, dtype="float32")
    first = run_batch(cfg, scorer=vllm_scorer, log=lambda m: None)
    record = json.loads(Path(str(out) + ".provenance.json").read_text())
    assert record["backend"] == "vllm" and record["dtype"] == "float32"
    assert len(record["model_sha256"]) == 64 and record["model_hash_source"] == "files"
    assert first["provenance"] == record
    before = out.read_bytes()
    with pytest.raises(ProvenanceMismatch, match=r"dtype: 'float32' \(in the output\) vs "
                                                  r"'bfloat16' \(this run\)"):
        run_batch(cfg.model_copy(update={"dtype": "bfloat16"}), scorer=vllm_scorer,
                  log=lambda m: None)
    assert out.read_bytes() == before  # nothing written, nothing scored
    again = run_batch(cfg, scorer=vllm_scorer, log=lambda m: None)  # same settings: resumes
    assert again["resumed"] == 4 and again["scored_this_run"] == 0
    assert not Path(str(out) + ".lock").exists()


def _title(proc: psutil.Process) -> str:
    """A process's title; "" while it execs (empty cmdline), once it has exited, or as a
    zombie."""
    try:
        return (proc.cmdline() or [""])[0]
    except psutil.Error:
        return ""
