"""vLLM's chosen experts (counted by our router wrapper) vs. transformers' own router.

Reference: transformers' MixtralForCausalLM in fp32 on the same checkpoint, top-k of the
router logits it returns with output_router_logits=True. Each prompt is sent as token ids
with max_tokens=1, so the window holds exactly the prompt tokens' routing.
"""

from __future__ import annotations

import time

import pytest
from session_server import SERVED_NAME

from training.test_models import NUM_EXPERTS, TOP_K

from .routing_client import reset_routing, routing_after

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _reference_counts(ckpt, prompts: list[list[int]]) -> list[list[int]]:
    import torch
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    counts = None
    with torch.no_grad():
        for ids in prompts:
            out = model(torch.tensor([ids]), output_router_logits=True)
            for layer, logits in enumerate(out.router_logits):
                chosen = torch.topk(logits.reshape(-1, NUM_EXPERTS), TOP_K, dim=-1).indices
                per_expert = torch.bincount(chosen.reshape(-1), minlength=NUM_EXPERTS)
                if counts is None:
                    counts = [[0] * NUM_EXPERTS for _ in out.router_logits]
                for e in range(NUM_EXPERTS):
                    counts[layer][e] += int(per_expert[e])
    return counts


def test_chosen_experts_match_transformers(mofe_server, openai_client, tiny_mofe):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mofe)
    texts = ["The patient presented with fever and a cough for three days.",
             "Preheat the oven and whisk the eggs with sugar.",
             "Mountains and rivers shape the borders of many countries.",
             "Beta blockers lower heart rate and blood pressure.",
             "the the the of and a to in"]
    prompts = [tok(t)["input_ids"] for t in texts]
    reset_routing(mofe_server)
    for ids in prompts:
        r = openai_client.completions.create(model=SERVED_NAME, prompt=ids, max_tokens=1)
        assert r.usage.prompt_tokens == len(ids)
    served = routing_after(mofe_server, time.time())["tokens"]
    expected = _reference_counts(tiny_mofe, prompts)
    assert sum(served[0]) == TOP_K * sum(len(p) for p in prompts)
    assert served == expected
