"""vLLM's chosen experts (counted by our router wrapper) vs. transformers' own router.

Reference: transformers' MixtralForCausalLM in fp32 on the same checkpoint, top-k of the
router logits it returns with output_router_logits=True. Each prompt is sent as token ids
with max_tokens=1, so the window holds exactly the prompt tokens' routing.
"""

from __future__ import annotations

import time

import pytest
from session_server import SERVED_NAME

from training.test_models import TOP_K

from .routing_client import reset_routing, routing_after, transformers_routing_counts

pytestmark = [pytest.mark.engine, pytest.mark.slow]


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
    expected = transformers_routing_counts(tiny_mofe, prompts)
    assert sum(served[0]) == TOP_K * sum(len(p) for p in prompts)
    assert served == expected
