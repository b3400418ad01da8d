"""Cost of MoFE routing metrics in serving: stock vLLM vs `mofe serve`, same checkpoint.

    .venv/bin/python benchmarks/serve_overhead.py [--model CKPT] [--pairs 8] [--eager]

Starts vLLM's own OpenAI server (stock MixtralForCausalLM; our plugin's override off) and
`mofe serve` (MoFEMixtralForCausalLM, metrics on, poller running) on the same per-expert
checkpoint with the same engine flags, both kept up; then drives them alternately (ABBA
order) with the same seeded load: 64 requests, concurrency 16, 128 random prompt tokens,
exactly 64 output tokens (ignore_eos). Prints output tok/s, p50/p99 TTFT and inter-token
latency per run and the MoFE/stock ratios with a 95% interval over pairs. Then times the
counter update alone (microbenchmark). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mofe_serve.server_process import MofeServer, ServerProcess, free_port  # noqa: E402


def stock_server(ckpt: Path, log: Path, extra: list[str]) -> ServerProcess:
    """vLLM's own api_server module (not the broken `vllm` console script)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MOFE_OVERRIDE_MIXTRAL"}
    env.update(HF_HUB_OFFLINE="1")
    return ServerProcess(
        [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model",
         str(ckpt), "--host", "127.0.0.1", "--port", str(port), *extra], log, port, env)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def drive(base_url: str, model: str, prompts: list[list[int]], concurrency: int,
                out_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0,
                                timeout=600)
    sem = asyncio.Semaphore(concurrency)
    ttft, itl, produced = [], [], 0

    async def one(ids):
        nonlocal produced
        async with sem:
            start = time.perf_counter()
            first = last = None
            n = 0
            stream = await client.completions.create(
                model=model, prompt=ids, max_tokens=out_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.choices and chunk.choices[0].text is not None:
                    first = first or now
                    last = now
                if chunk.usage is not None:
                    n = chunk.usage.completion_tokens
            produced += n
            ttft.append(first - start)
            # Inter-token latency per request: mean gap between output tokens (TPOT).
            itl.append((last - first) / max(n - 1, 1))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    await client.close()
    return {"tok_s": produced / wall, "ttft_p50": percentile(ttft, 50),
            "ttft_p99": percentile(ttft, 99), "itl_p50": percentile(itl, 50),
            "itl_p99": percentile(itl, 99)}


def mean_ci(xs: list[float]) -> tuple[float, float]:
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, float("nan")
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
    return m, t.get(len(xs), 2.0) * statistics.stdev(xs) / len(xs) ** 0.5


def _best_of(fn, reps: int) -> float:
    """Microseconds per call, best of 3 runs (the machine is shared)."""
    times = []
    for _ in range(3):
        for _ in range(50):
            fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps * 1e6)
    return min(times)


def _vllm_topk(logits, top_k: int):
    import torch

    return torch.topk(logits, top_k, dim=-1)[0].softmax(-1)


def microbenchmark(layers: int = 4, experts: int = 4, top_k: int = 2) -> dict[int, dict]:
    """The routing hot path alone, one thread: the per-layer record (one small op per MoE
    layer, in the forward) and the once-per-step aggregation into the totals, as the server
    runs them (eager: the worker's path with --enforce-eager, and the runtime of the custom op
    under torch.compile minus the dispatcher)."""
    import torch

    from mofe_serve.counters import RoutingCounters

    torch.set_num_threads(1)
    counters = RoutingCounters(layers, experts, top_k, max_tokens=2048)
    counters.set_enabled(True)
    print(f"\nrouting hot path alone (1 thread, {layers} layers, {experts} experts, "
          f"top-{top_k}):")
    per_call = {}
    for tokens in (1, 16, 256, 2048):
        logits = torch.randn(tokens, experts)
        weights, ids = torch.topk(logits.softmax(-1), top_k)
        ids = ids.to(torch.int32)
        n = 5000 if tokens <= 256 else 500
        record = _best_of(partial(counters.record, 0, ids, weights), n)
        step = _best_of(partial(counters.end_step, tokens), max(n // 5, 100))
        ref = _best_of(partial(_vllm_topk, logits, top_k), n)
        print(f"  {tokens:5d} tokens: record {record:6.1f} us/layer, aggregate {step:6.1f} "
              f"us/step  (vLLM's own CPU top-k+softmax: {ref:6.1f} us/layer)")
        per_call[tokens] = {"record": record, "aggregate": step}
    return per_call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="Mixtral checkpoint (default: build a random "
                    "4-expert top-2 Mixtral with the kit tokenizer)")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--in-tokens", type=int, default=128)
    ap.add_argument("--out-tokens", type=int, default=64)
    ap.add_argument("--eager", action="store_true", help="--enforce-eager for both servers")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=6, help="built model: MoE layers")
    ap.add_argument("--hidden", type=int, default=512, help="built model: hidden size")
    ap.add_argument("--intermediate", type=int, default=1792, help="built model: expert FFN")
    ap.add_argument("--micro-only", action="store_true")
    ap.add_argument("--baseline", choices=["stock", "mofe"], default="stock",
                    help="'mofe': A/A check, the baseline is a second mofe serve")
    ap.add_argument("--mofe-arg", action="append", default=[],
                    help="extra option for mofe serve only, e.g. --mofe-arg=--routing-poll-interval=10")
    ap.add_argument("--mofe-first", action="store_true",
                    help="start mofe serve before the stock server (start-order check)")
    opts = ap.parse_args()
    if opts.micro_only:
        microbenchmark()
        return

    from model_registry.checkpoint import convert_checkpoint, vllm_loadable

    work = Path(tempfile.mkdtemp(prefix="mofe-bench-"))
    if opts.model is None:
        from training.kit import KitSizes
        from training.test_models import build_random_mixtral

        heads = max(4, opts.hidden // 64)
        opts.model = build_random_mixtral(
            work / "bench-mofe", KitSizes(hidden_size=opts.hidden,
                                          intermediate_size=opts.intermediate,
                                          num_layers=opts.layers, num_heads=heads,
                                          num_kv_heads=max(2, heads // 2)))
    # Stock vLLM reads the per-expert layout only (mofe serve reads both): one copy for both.
    ckpt = opts.model if vllm_loadable(opts.model) else convert_checkpoint(
        opts.model, work / "bench-per-expert")
    # One explicit KV-cache size for both (stock vLLM would otherwise reserve 92% of RAM).
    flags = ["--dtype", opts.dtype, "--no-enable-prefix-caching", "--kv-cache-memory-bytes",
             str(1 << 30), "--served-model-name", "bench", "--disable-uvicorn-access-log"]
    flags += ["--enforce-eager"] if opts.eager else []
    servers = {}
    try:
        baseline = stock_server if opts.baseline == "stock" else (
            lambda c, log, f: MofeServer(c, log, extra=f))
        start = {"stock": lambda: baseline(ckpt, work / "stock.log", flags),
                 "mofe": lambda: MofeServer(ckpt, work / "mofe.log",
                                            extra=flags + opts.mofe_arg)}
        for name in (["mofe", "stock"] if opts.mofe_first else ["stock", "mofe"]):
            servers[name] = start[name]()
            servers[name].wait_ready()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(ckpt)
        vocab, n_layers = config.vocab_size, config.num_hidden_layers
        rng = random.Random(opts.seed)
        prompts = [[rng.randrange(10, vocab) for _ in range(opts.in_tokens)]
                   for _ in range(opts.requests)]
        for name in servers:  # warm-up: one full run each (the first full run is slower)
            asyncio.run(drive(servers[name].base_url, "bench", prompts, opts.concurrency,
                              opts.out_tokens))
        results = {"stock": [], "mofe": []}
        for i in range(opts.pairs):
            order = ["stock", "mofe"] if i % 2 == 0 else ["mofe", "stock"]
            for name in order:
                # Freeze the other server while this one is measured: every vLLM CPU worker
                # is pinned to the same core, and an idle engine woken by the routing poller
                # (an RPC per second) spins on its queue and steals that core.
                other = servers["mofe" if name == "stock" else "stock"]
                os.killpg(other.proc.pid, signal.SIGSTOP)
                try:
                    r = asyncio.run(drive(servers[name].base_url, "bench", prompts,
                                          opts.concurrency, opts.out_tokens))
                finally:
                    os.killpg(other.proc.pid, signal.SIGCONT)
                results[name].append(r)
                print(f"pair {i} {name:5s} {r['tok_s']:7.1f} tok/s  TTFT p50 "
                      f"{r['ttft_p50']:.3f}s p99 {r['ttft_p99']:.3f}s  ITL(TPOT) p50 "
                      f"{r['itl_p50'] * 1e3:.1f}ms p99 {r['itl_p99'] * 1e3:.1f}ms", flush=True)
        print(f"\n{opts.pairs} ABBA pairs, {opts.requests} requests, concurrency "
              f"{opts.concurrency}, {opts.in_tokens} in / {opts.out_tokens} out, {opts.dtype}, "
              f"{'eager' if opts.eager else 'compiled'}")
        for key in ("tok_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99"):
            stock = [r[key] for r in results["stock"]]
            mofe = [r[key] for r in results["mofe"]]
            ratio, half = mean_ci([m / s for m, s in zip(mofe, stock, strict=True)])
            print(f"  {key:9s} stock {statistics.mean(stock):9.4f}  mofe "
                  f"{statistics.mean(mofe):9.4f}  mofe/stock {ratio:.3f} +- {half:.3f}")
    finally:
        for server in servers.values():
            server.stop()
        # Keep the two server logs, drop the (large) checkpoints.
        for big in ("cache", "bench-mofe"):
            shutil.rmtree(work / big, ignore_errors=True)
        print(f"server logs: {work}/stock.log {work}/mofe.log")
    per_call = microbenchmark(n_layers, config.num_local_experts, config.num_experts_per_tok)
    step = statistics.median(r["itl_p50"] for r in results["stock"])
    hot = per_call[16]
    cost = (n_layers * hot["record"] + hot["aggregate"]) * 1e-6
    print(f"\nestimate: {n_layers} layers x {hot['record']:.1f} us + {hot['aggregate']:.1f} us "
          f"= {cost * 1e3:.3f} ms per decode step of {step * 1e3:.1f} ms (stock TPOT p50): "
          f"{100 * cost / step:.2f}%")


if __name__ == "__main__":
    main()
