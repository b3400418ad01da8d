"""Load a checkpoint in vLLM's native Mixtral and print greedy output (run as a subprocess).

    python tests/training/vllm_generate.py CHECKPOINT_DIR
Prints one line: "ARCH <names>" then "TEXT <json string>".
"""

import json
import os
import sys

if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import SamplingParams

    from mofe_serve.engine import build_llm, close_llm

    # Stock vLLM Mixtral (no counting model), KV cache sized as `mofe serve` sizes it.
    llm = build_llm(sys.argv[1], count_routing=False, enforce_eager=True, dtype="float32",
                    max_model_len=256, seed=0)
    out = llm.generate(["<|user|>\nWhat is heparin used for?</s>\n<|assistant|>\n"],
                       SamplingParams(max_tokens=8, temperature=0.0))
    config = llm.llm_engine.model_config.hf_config
    print("ARCH", ",".join(config.architectures), flush=True)
    print("TOKENS", len(out[0].outputs[0].token_ids), flush=True)
    print("TEXT", json.dumps(out[0].outputs[0].text), flush=True)
    close_llm(llm)
