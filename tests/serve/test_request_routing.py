"""Per-request routing summaries through the real server (the session `mofe serve`: fp32,
prefix caching off) and the official openai client: opt-in by body or header, chat and
completions, streaming (with and without include_usage) and not, n > 1; exact totals per
request; 32 concurrent requests each equal to transformers' fp32 router over its own
tokens; requests that do not opt in are not touched."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from session_server import SERVED_NAME

from training.test_models import DOMAINS, NUM_EXPERTS, NUM_LAYERS, TOP_K

from .routing_client import scrape

pytestmark = [pytest.mark.engine, pytest.mark.slow]

OPT_IN = {"mofe": {"routing": True}}


def _check_exact(summary: dict, prompt: int, completion: int) -> None:
    """Every layer's slots = top_k x tokens forwarded; the last sampled token never is."""
    assert summary["prompt_tokens"] == prompt
    assert summary["completion_tokens"] == completion - 1
    forwarded = prompt + completion - 1
    assert len(summary["tokens"]) == NUM_LAYERS
    for layer, (counts, weights) in enumerate(zip(summary["tokens"], summary["gate_weight"],
                                                  strict=True)):
        assert len(counts) == NUM_EXPERTS
        assert sum(counts) == TOP_K * forwarded, f"layer {layer}: {counts}"
        assert sum(weights) == pytest.approx(forwarded, rel=1e-6)  # renormalized top-k
    assert set(summary["domains"]) == set(DOMAINS)
    assert sum(summary["domains"].values()) == pytest.approx(1.0)


def test_completion_and_chat_non_streaming(openai_client):
    r = openai_client.completions.create(model=SERVED_NAME, prompt="Insulin lowers blood",
                                         max_tokens=5, extra_body={**OPT_IN, "ignore_eos": True})
    _check_exact(r.mofe_routing, r.usage.prompt_tokens, r.usage.completion_tokens)
    c = openai_client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "Name a bone."}],
        max_tokens=4, extra_body={**OPT_IN, "ignore_eos": True})
    _check_exact(c.mofe_routing, c.usage.prompt_tokens, c.usage.completion_tokens)
    assert c.choices[0].message.content is not None


def test_header_opt_in_and_no_opt_in(openai_client, mofe_server):
    r = openai_client.with_options(default_headers={"X-MoFE-Routing": "1"}).completions.create(
        model=SERVED_NAME, prompt="Rice is cooked in", max_tokens=3,
        extra_body={"ignore_eos": True})
    _check_exact(r.mofe_routing, r.usage.prompt_tokens, r.usage.completion_tokens)
    plain = openai_client.completions.create(model=SERVED_NAME, prompt="Rice is cooked in",
                                             max_tokens=3, extra_body={"ignore_eos": True})
    assert "mofe_routing" not in plain.model_dump()
    off = openai_client.completions.create(model=SERVED_NAME, prompt="Rice is cooked in",
                                           max_tokens=3,
                                           extra_body={"mofe": {"routing": False}})
    assert "mofe_routing" not in off.model_dump()
    bad = httpx.post(f"{mofe_server.base_url}/v1/completions",
                     headers={"Authorization": f"Bearer {mofe_server.api_key}"},
                     json={"model": SERVED_NAME, "prompt": "a", "mofe": {"routing": "yes"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "mofe"


@pytest.mark.parametrize("include_usage", [True, False])
def test_streaming_final_chunk(openai_client, include_usage):
    options = {"include_usage": True} if include_usage else None
    chunks = list(openai_client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=6, stream=True, stream_options=options,
        extra_body={**OPT_IN, "ignore_eos": True}))
    final = chunks[-1]
    assert final.choices == []
    carrying = [c for c in chunks if getattr(c, "mofe_routing", None) is not None]
    assert carrying == [final]  # only in the final chunk
    assert (final.usage is not None) == include_usage
    summary = final.mofe_routing
    if include_usage:
        _check_exact(summary, final.usage.prompt_tokens, final.usage.completion_tokens)
    else:  # no usage asked for: 6 tokens generated (ignore_eos), 5 of them forwarded
        _check_exact(summary, summary["prompt_tokens"], 6)


def test_streaming_completion_without_usage(openai_client):
    chunks = list(openai_client.completions.create(
        model=SERVED_NAME, prompt="Paris is the capital of", max_tokens=4, stream=True,
        extra_body={**OPT_IN, "ignore_eos": True}))
    final = chunks[-1]
    assert final.choices == [] and final.id == chunks[0].id and final.model == SERVED_NAME
    assert final.mofe_routing["completion_tokens"] == 3


def test_n_samples_share_one_summary(openai_client):
    r = openai_client.completions.create(model=SERVED_NAME, prompt="Beta blockers lower",
                                         max_tokens=4, n=3,
                                         extra_body={**OPT_IN, "ignore_eos": True})
    s = r.mofe_routing
    prompt = r.usage.prompt_tokens
    # One summary per request: every sample computes the prompt (no prefix caching).
    assert s["prompt_tokens"] == 3 * prompt
    assert s["completion_tokens"] == r.usage.completion_tokens - 3
    assert sum(s["tokens"][0]) == TOP_K * (3 * prompt + r.usage.completion_tokens - 3)


def _reference(ckpt, sequences: list[list[int]]) -> list[tuple[list, list]]:
    """transformers fp32, each sequence on its own: per-layer per-expert top-k counts and
    renormalized top-k weights summed (Mixtral's router)."""
    import torch
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in sequences:
            logits = model(torch.tensor([ids]), output_router_logits=True).router_logits
            counts, gates = [], []
            for layer_logits in logits:
                probs = layer_logits.reshape(-1, NUM_EXPERTS).softmax(-1)
                w, chosen = torch.topk(probs, TOP_K, dim=-1)
                w = w / w.sum(-1, keepdim=True)
                counts.append(torch.bincount(chosen.reshape(-1), minlength=NUM_EXPERTS)
                              .tolist())
                gates.append(torch.zeros(NUM_EXPERTS, dtype=torch.float64)
                             .index_add_(0, chosen.reshape(-1), w.reshape(-1).double())
                             .tolist())
            out.append((counts, gates))
    return out


def test_32_concurrent_requests_match_reference_and_never_leak(mofe_server, tiny_mofe):
    import openai

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{mofe_server.base_url}/v1",
                                    api_key=mofe_server.api_key, max_retries=0, timeout=300)
        try:
            async def one(i):
                prompt = [(7 * i + 3 * j) % 400 + 20 for j in range(3 + i)]  # 3..34 tokens
                r = await client.completions.create(
                    model=SERVED_NAME, prompt=prompt, max_tokens=1 + i % 7, temperature=0,
                    extra_body={**OPT_IN, "ignore_eos": True, "return_token_ids": True})
                return prompt, r
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await client.close()

    results = asyncio.run(run())
    sequences = []
    for prompt, r in results:
        generated = r.choices[0].token_ids
        assert len(generated) == r.usage.completion_tokens
        _check_exact(r.mofe_routing, len(prompt), len(generated))
        sequences.append(prompt + generated[:-1])  # what went through the model
    for (prompt, r), (counts, gates) in zip(results, _reference(tiny_mofe, sequences),
                                            strict=True):
        assert r.mofe_routing["tokens"] == counts, f"prompt of {len(prompt)} tokens"
        for served, ref in zip(r.mofe_routing["gate_weight"], gates, strict=True):
            assert served == pytest.approx(ref, rel=1e-4, abs=1e-4)


def test_domain_share_histogram(openai_client, mofe_server):
    def count() -> float:
        samples = scrape(mofe_server).get("mofe_request_domain_share", [])
        return sum(s.value for s in samples if s.name == "mofe_request_domain_share_count"
                   and s.labels["domain"] == DOMAINS[0] and s.labels["model"] == SERVED_NAME)

    before = count()
    openai_client.completions.create(model=SERVED_NAME, prompt="a b c", max_tokens=2,
                                     extra_body=OPT_IN)
    openai_client.completions.create(model=SERVED_NAME, prompt="a b c", max_tokens=2)
    assert count() == before + 1  # one observation per opted-in request and domain
    buckets = {s.labels["le"] for s in scrape(mofe_server)["mofe_request_domain_share"]
               if s.name.endswith("_bucket")}
    assert "1.0" in buckets and "+Inf" in buckets


def test_raw_json_field_order_untouched(mofe_server):
    """The summary is appended: the rest of the body keeps vLLM's bytes and order."""
    r = httpx.post(f"{mofe_server.base_url}/v1/completions",
                   headers={"Authorization": f"Bearer {mofe_server.api_key}"},
                   json={"model": SERVED_NAME, "prompt": "a", "max_tokens": 2, **OPT_IN},
                   timeout=120)
    assert r.status_code == 200 and r.headers["content-length"] == str(len(r.content))
    body = json.loads(r.content)
    assert list(body)[-1] == "mofe_routing"
