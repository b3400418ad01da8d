"""`mofe serve` under load: output tokens/s, TTFT and inter-token latency at concurrency 1/8/32.

    .venv/bin/python benchmarks/serve_latency.py [--model CKPT] [--requests 64] [--rounds 2]

One server (metrics on), the same seeded load per level (128 random prompt tokens, exactly
64 out, ignore_eos), levels interleaved over --rounds so drift hits every level alike.
Prints per-level medians over rounds and the min-max spread of throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_overhead import drive  # noqa: E402
from mofe_serve.server_process import MofeServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--eager", action="store_true")
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mofe-latency-"))
    if opts.model is None:
        from training.kit import KitSizes
        from training.test_models import build_random_mixtral

        opts.model = build_random_mixtral(
            work / "mixtral-88m", KitSizes(hidden_size=512, intermediate_size=1024,
                                           num_layers=6, num_heads=8, num_kv_heads=8),
            dtype="bfloat16")
    flags = ["--dtype", "bfloat16", "--no-enable-prefix-caching", "--served-model-name",
             "bench", "--disable-uvicorn-access-log", "--max-num-seqs", "32"]
    flags += ["--enforce-eager"] if opts.eager else []
    server = MofeServer(opts.model, work / "server.log", extra=flags)
    levels = [int(x) for x in opts.levels.split(",")]
    results: dict[int, list[dict]] = {c: [] for c in levels}
    try:
        server.wait_ready()
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(opts.model).vocab_size
        rng = random.Random(0)
        prompts = [[rng.randrange(10, vocab) for _ in range(128)] for _ in range(opts.requests)]
        asyncio.run(drive(server.base_url, "bench", prompts[:8], 8, 8))  # warm-up
        for r in range(opts.rounds):
            for c in levels if r % 2 == 0 else reversed(levels):
                results[c].append(asyncio.run(drive(server.base_url, "bench", prompts, c, 64)))
                print(f"round {r} concurrency {c:2d}: {results[c][-1]['tok_s']:.0f} tok/s",
                      flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{opts.requests} requests x (128 in, 64 out), {'eager' if opts.eager else 'compiled'}"
          f", medians over {opts.rounds} rounds")
    print("| concurrency | output tok/s (range) | TTFT p50 / p99 (s) | ITL p50 / p99 (ms) |")
    print("|---:|---:|---:|---:|")
    for c in levels:
        med = {k: statistics.median(r[k] for r in results[c]) for k in results[c][0]}
        tok = [r["tok_s"] for r in results[c]]
        print(f"| {c} | {med['tok_s']:.0f} ({min(tok):.0f}-{max(tok):.0f}) | "
              f"{med['ttft_p50']:.2f} / {med['ttft_p99']:.2f} | "
              f"{med['itl_p50'] * 1e3:.0f} / {med['itl_p99'] * 1e3:.0f} |")


if __name__ == "__main__":
    main()
