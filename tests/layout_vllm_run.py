"""Greedy output and routing counts of one checkpoint in vLLM (run as a subprocess).

    python tests/layout_vllm_run.py CHECKPOINT_DIR
Loads MoFEMixtralForCausalLM with the routing worker extension (fp32, eager), generates
greedily for fixed prompts and prints one line: "RESULT <json>" with the generated token ids
and the [layer][expert] routing counts of that generation.
"""

import json
import os
import sys

PROMPTS = ["The heart pumps blood through", "Paris is the capital of",
           "Heparin is an anticoagulant that", "Bake the bread at a high"]

if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import SamplingParams

    from mofe_serve.engine import RoutingRpc, build_llm, close_llm

    # The one engine set-up of mofe serve / mofe batch (counting model, KV size on CPU).
    llm = build_llm(sys.argv[1], enforce_eager=True, dtype="float32", max_model_len=256,
                    seed=0)
    llm.collective_rpc(RoutingRpc.ENABLE, args=(True,))
    out = llm.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0.0))
    routing = llm.collective_rpc(RoutingRpc.SNAPSHOT)[0]["tokens"]
    print("RESULT " + json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in out],
                                  "routing": routing}), flush=True)
    close_llm(llm)
