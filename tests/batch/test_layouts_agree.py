"""vLLM reads both checkpoint layouts alike (docs/format.md), using the suite's two running
engines instead of starting its own: the session server serves `tiny_mofe` in the fused
layout (tests/conftest.py), the offline scorer loads its per-expert copy
(tests/batch/conftest.py). Same prompts as token ids, one request at a time, greedy, fp32:
identical generated tokens and identical per-request routing counts.
"""

from __future__ import annotations

import time

import pytest
from serve.routing_client import reset_routing, routing_after
from session_server import SERVED_NAME

from model_registry.checkpoint import expert_hashes
from mofe_batch.routing import delta
from training.test_models import NUM_LAYERS, TOP_K

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PROMPTS = ["The heart pumps blood through", "Paris is the capital of",
           "Heparin is an anticoagulant that", "Bake the bread at a high"]
MAX_TOKENS = 12


def test_fused_and_per_expert_give_identical_output_and_routing(
        mofe_server, vllm_scorer, tiny_mofe, tiny_mofe_per_expert):
    import openai
    from vllm import SamplingParams, TokensPrompt

    # The same experts, only stored differently.
    assert expert_hashes(tiny_mofe) == expert_hashes(tiny_mofe_per_expert)
    client = openai.OpenAI(base_url=f"{mofe_server.base_url}/v1", api_key=mofe_server.api_key,
                           max_retries=0, timeout=120)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    for text in PROMPTS:
        ids = vllm_scorer.tokenizer(text)["input_ids"]
        # Fused: the session server; its routing window holds this one request.
        reset_routing(mofe_server)
        r = client.completions.create(model=SERVED_NAME, prompt=ids, max_tokens=MAX_TOKENS,
                                      temperature=0, extra_body={"ignore_eos": True,
                                                                 "return_token_ids": True})
        served_tokens = list(r.choices[0].token_ids)
        served_routing = routing_after(mofe_server, time.time())["tokens"]
        # Per-expert: the in-process engine; counts are cumulative, so take the difference.
        before = vllm_scorer.routing_snapshot()
        out = vllm_scorer.llm.generate([TokensPrompt(prompt_token_ids=ids)], params,
                                       use_tqdm=False)
        routing = delta(vllm_scorer.routing_snapshot(), before)
        tokens = list(out[0].outputs[0].token_ids)

        assert len(tokens) == MAX_TOKENS, text
        assert tokens == served_tokens, text
        assert routing == served_routing, text
        # Every forwarded token counted in every layer: prompt + generated - 1, top-k each.
        forwarded = len(ids) + MAX_TOKENS - 1
        assert [sum(layer) for layer in routing] == [TOP_K * forwarded] * NUM_LAYERS, text
