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
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM, SamplingParams

    from mofe_serve.plugin import ARCHITECTURE
    from mofe_serve.worker_ext import WORKER_EXTENSION

    llm = LLM(model=sys.argv[1], enforce_eager=True, dtype="float32", max_model_len=256,
              seed=0, hf_overrides={"architectures": [ARCHITECTURE]},
              worker_extension_cls=WORKER_EXTENSION)
    llm.collective_rpc("mofe_routing_enable", args=(True,))
    out = llm.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0.0))
    routing = llm.collective_rpc("mofe_routing_snapshot")[0]["tokens"]
    print("RESULT " + json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in out],
                                  "routing": routing}), flush=True)
