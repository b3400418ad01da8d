"""Offline generation throughput: our vLLM path (MoFE plugin) vs transformers `generate`.

    .venv/bin/python benchmarks/offline_generation.py [--model DIR] [--pairs 3]

Same checkpoint (a random Mixtral, 6 layers, hidden 512, 4 experts, top-2, bf16 unless
--model is given), batch sizes 1, 8 and 32, prompts of mixed lengths (16-128 random token
ids, seeded), exactly 64 new tokens each (EOS ignored). Runs are alternated A/B per batch
size, --pairs times, and the script prints tokens/s per side, the median ratio and its
spread. vLLM's CPU worker computes with one pinned thread, so transformers gets one torch
thread too by default (`--hf-threads`): like for like, and far less sensitive to other load
on a 2-core machine than two OpenMP threads.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NEW_TOKENS = 64


def prompts(batch: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(rng.randint(16, 128))] for _ in range(batch)]


def run_vllm(llm, batch_prompts) -> float:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, ignore_eos=True,
                            temperature=0.0)
    start = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch_prompts], params,
                        use_tqdm=False)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == NEW_TOKENS for o in outs)
    return NEW_TOKENS * len(batch_prompts) / elapsed


def run_hf(model, batch_prompts, pad_id: int) -> float:
    import torch

    width = max(map(len, batch_prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch_prompts])  # left pad
    mask = (torch.arange(width)[None, :] >= torch.tensor(
        [width - len(p) for p in batch_prompts])[:, None]).long()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad_id)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - width == NEW_TOKENS
    return NEW_TOKENS * len(batch_prompts) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--hf-threads", type=int, default=1)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from mofe_serve.engine import build_llm, close_llm
    from training.kit import KitSizes
    from training.test_models import build_random_mixtral

    model_dir = args.model
    if model_dir is None:
        model_dir = Path(tempfile.mkdtemp()) / "mixtral-88m"
        build_random_mixtral(model_dir, KitSizes(hidden_size=512, intermediate_size=1024,
                                                 num_layers=6, num_heads=8, num_kv_heads=8),
                             dtype="bfloat16")
    # The engine `mofe batch` builds: counting model, KV cache sized from the model.
    llm = build_llm(str(model_dir), dtype="bfloat16", enforce_eager=True, seed=0,
                    enable_prefix_caching=False, max_num_seqs=32)
    torch.set_num_threads(args.hf_threads)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    vocab = hf.config.vocab_size
    pad_id = hf.config.pad_token_id or 0
    run_vllm(llm, prompts(4, vocab, 99))  # warm both sides
    run_hf(hf, prompts(2, vocab, 99), pad_id)
    print(f"model: {model_dir}  threads: {torch.get_num_threads()}  new tokens: {NEW_TOKENS}")
    print(f"{'batch':>5} {'vLLM tok/s':>11} {'HF tok/s':>9} {'ratio':>6} {'ratio range':>14}")
    for batch in map(int, args.batches.split(",")):
        v, h = [], []
        for pair in range(args.pairs):
            ps = prompts(batch, vocab, seed=pair)
            v.append(run_vllm(llm, ps))
            h.append(run_hf(hf, ps, pad_id))
        ratios = [a / b for a, b in zip(v, h, strict=True)]
        print(f"{batch:>5} {statistics.median(v):>11.0f} {statistics.median(h):>9.0f} "
              f"{statistics.median(ratios):>6.2f} {min(ratios):>6.2f}-{max(ratios):<6.2f}")
    close_llm(llm)


if __name__ == "__main__":
    main()
