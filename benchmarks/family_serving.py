"""One family server vs one server per variant: memory and mixed-load throughput.

    .venv/bin/python benchmarks/family_serving.py [--pairs 4] [--variants 3] [--eager]

Builds a random Mixtral (8 experts, hidden 512, kit tokenizer; training/test_models.py) and
makes `--variants` variants of it: the expert tensors are copied untouched and every other
tensor (embeddings, attention, norms, router, lm_head) is perturbed with seeded noise, which
is what a MoFE training run changes (the benchmark measures serving, so no training). Then:

* set-up F: one `mofe serve v0 v1 v2` (one engine, experts once);
* set-up S: one `mofe serve vi` per variant.

Both set-ups get the same engine flags and the same KV-cache size per server (so S reserves
`--variants` times F's KV cache, as separate servers would). Both stay up; they are driven
alternately (ABBA) with the same seeded mixed load (requests spread evenly over the variants,
each sent to the server that serves it) while the other set-up is frozen (SIGSTOP), as
serve_overhead.py does. Prints total RSS and PSS of all server processes per set-up, output
tok/s per run and the F/S ratio with a 95% interval over pairs, and the paper arithmetic:
the weight memory of 4 TinyLlama-1.1B experts x 5 variants from tensor sizes. Not a test.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_overhead import drive, mean_ci  # noqa: E402
from mofe_serve.server_process import MofeServer  # noqa: E402

GB = 1e9


def make_variants(base: Path, out: Path, n: int) -> list[Path]:
    """`n` copies of `base` whose non-expert tensors carry seeded noise; experts untouched
    (model_registry.checkpoint says which tensors are experts)."""
    import torch
    from safetensors.torch import load_file, save_file

    from model_registry.checkpoint import non_expert_tensors, weight_files

    moving = {t.name for t in non_expert_tensors(base)}
    paths = []
    for v in range(n):
        target = out / f"variant-{v}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(base, target)
        gen = torch.Generator().manual_seed(1000 + v)
        for file in weight_files(target):
            tensors = load_file(str(file))
            for name in sorted(tensors):
                if v and name in moving:
                    t = tensors[name]
                    noise = torch.randn(t.shape, generator=gen, dtype=torch.float32) * 0.02
                    tensors[name] = (t.float() + noise).to(t.dtype)
            save_file(tensors, str(file), metadata={"format": "pt"})
        paths.append(target)
    return paths


def memory(servers: list) -> tuple[float, float]:
    """(RSS, PSS) in GB summed over every process of these servers."""
    import psutil

    rss = pss = 0
    for server in servers:
        procs = [psutil.Process(server.proc.pid)]
        procs += procs[0].children(recursive=True)
        for p in procs:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss / GB, pss / GB


def paper_arithmetic(experts: int = 4, variants: int = 5, bytes_per: int = 2) -> dict:
    """Weight bytes of TinyLlama-1.1B-shaped MoFE variants (bf16): separate vs one family."""
    hidden, inter, layers, vocab, heads, kv_heads = 2048, 5632, 22, 32000, 32, 4
    head_dim = hidden // heads
    expert_params = experts * 3 * hidden * inter * layers
    attention = (hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim) * layers
    other = (2 * vocab * hidden + attention + experts * hidden * layers
             + (2 * layers + 1) * hidden)
    separate = variants * (expert_params + other) * bytes_per
    family = (expert_params + variants * other) * bytes_per
    return {"expert_params": expert_params, "other_params": other,
            "separate_gb": separate / GB, "family_gb": family / GB,
            "ratio": family / separate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--in-tokens", type=int, default=64)
    ap.add_argument("--out-tokens", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1792)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--kv-bytes", type=int, default=256 << 20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paper-only", action="store_true")
    opts = ap.parse_args()
    paper = paper_arithmetic()
    print(f"paper arithmetic (4 TinyLlama-1.1B experts x 5 variants, bf16 weights): "
          f"experts {paper['expert_params'] / 1e9:.3f}B params, everything else "
          f"{paper['other_params'] / 1e9:.3f}B per variant; 5 servers "
          f"{paper['separate_gb']:.2f} GB, one family server {paper['family_gb']:.2f} GB "
          f"({paper['ratio']:.2f}x)", flush=True)
    if opts.paper_only:
        return

    from training.kit import KitSizes
    from training.test_models import build_random_mixtral

    work = Path(tempfile.mkdtemp(prefix="mofe-family-bench-"))
    heads = max(4, opts.hidden // 64)
    base = build_random_mixtral(
        work / "base", KitSizes(hidden_size=opts.hidden, intermediate_size=opts.intermediate,
                                num_layers=opts.layers, num_heads=heads,
                                num_kv_heads=max(2, heads // 2)),
        experts=opts.experts, dtype=opts.dtype)
    variants = make_variants(base, work, opts.variants)
    names = [p.name for p in variants]
    flags = ["--dtype", opts.dtype, "--no-enable-prefix-caching", "--kv-cache-memory-bytes",
             str(opts.kv_bytes), "--disable-uvicorn-access-log", "--max-model-len", "512"]
    flags += ["--enforce-eager"] if opts.eager else []
    setups: dict[str, list] = {"family": [], "separate": []}
    try:
        setups["family"].append(MofeServer(variants[0], work / "family.log",
                                           extra=[*map(str, variants[1:]), *flags]))
        setups["family"][0].wait_ready()
        for i, path in enumerate(variants):
            server = MofeServer(path, work / f"separate-{i}.log", extra=flags)
            setups["separate"].append(server)
            server.wait_ready()
        rng = random.Random(opts.seed)
        prompts = [[rng.randrange(10, 1000) for _ in range(opts.in_tokens)]
                   for _ in range(opts.requests)]
        # Request i goes to variant i % V: the same load for both set-ups.
        share = {v: prompts[v::len(variants)] for v in range(len(variants))}

        def url(setup: str, v: int) -> str:
            return setups[setup][0 if setup == "family" else v].base_url

        async def mixed(setup: str) -> dict:
            per = opts.concurrency // len(variants) or 1
            parts = await asyncio.gather(*(
                drive(url(setup, v), names[v], share[v], per, opts.out_tokens)
                for v in range(len(variants))))
            return {"tok_s": sum(p["tok_s"] for p in parts)}

        def frozen(setup: str):
            return [s.proc.pid for s in setups["separate" if setup == "family" else "family"]]

        def run(setup: str) -> dict:
            for pid in frozen(setup):
                os.killpg(pid, signal.SIGSTOP)
            try:
                return asyncio.run(mixed(setup))
            finally:
                for pid in frozen(setup):
                    os.killpg(pid, signal.SIGCONT)

        for setup in setups:  # warm-up
            run(setup)
        mem = {setup: memory(servers) for setup, servers in setups.items()}
        results: dict[str, list] = {"family": [], "separate": []}
        for i in range(opts.pairs):
            for setup in (["family", "separate"] if i % 2 == 0 else ["separate", "family"]):
                r = run(setup)
                results[setup].append(r["tok_s"])
                print(f"pair {i} {setup:8s} {r['tok_s']:7.1f} tok/s", flush=True)
        ratio, half = mean_ci([f / s for f, s in zip(results["family"], results["separate"],
                                                     strict=True)])
        print(f"\n{opts.variants} variants, random Mixtral {opts.layers} layers, hidden "
              f"{opts.hidden}, {opts.experts} experts, {opts.dtype}, "
              f"{'eager' if opts.eager else 'compiled'}; {opts.requests} requests "
              f"({opts.in_tokens} in / {opts.out_tokens} out) spread over the variants, "
              f"concurrency {opts.concurrency}, {opts.pairs} ABBA pairs")
        print("| set-up | servers | RSS GB | PSS GB | output tok/s (mean, min-max) |")
        print("|---|---|---|---|---|")
        for setup, servers in setups.items():
            xs = results[setup]
            print(f"| {setup} | {len(servers)} | {mem[setup][0]:.2f} | {mem[setup][1]:.2f} | "
                  f"{statistics.mean(xs):.1f} ({min(xs):.1f}-{max(xs):.1f}) |")
        print(f"memory family/separate: RSS {mem['family'][0] / mem['separate'][0]:.2f}x, "
              f"PSS {mem['family'][1] / mem['separate'][1]:.2f}x; "
              f"tok/s family/separate {ratio:.2f} +- {half:.2f} (95%)")
    finally:
        for servers in setups.values():
            for server in servers:
                server.stop()
        for path in [work / "base", *(work / n for n in names)]:
            shutil.rmtree(path, ignore_errors=True)
        print(f"server logs: {work}")


if __name__ == "__main__":
    main()
