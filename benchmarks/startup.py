"""Start-up time of `mofe serve` to a healthy /health: eager vs compiled (torch.compile).

    .venv/bin/python benchmarks/startup.py [--model CKPT] [--pairs 2]

Alternates eager and compiled starts (ABBA) on the same checkpoint and prints each time,
the medians and the compiled/eager ratio. Includes process start and vLLM import (~12 s of
each start on this machine, per the shared notes).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mofe_serve.server_process import MofeServer  # noqa: E402


def time_start(model: Path, log: Path, eager: bool) -> float:
    flags = ["--dtype", "bfloat16"] + (["--enforce-eager"] if eager else [])
    start = time.perf_counter()
    server = MofeServer(model, log, extra=flags)
    try:
        server.wait_ready(timeout=600)
        return time.perf_counter() - start
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--pairs", type=int, default=2)
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mofe-startup-"))
    try:
        if opts.model is None:
            from training.kit import KitSizes
            from training.test_models import build_random_mixtral

            opts.model = build_random_mixtral(work / "tiny", KitSizes(), dtype="bfloat16")
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for i in range(opts.pairs):
            for mode in ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager"):
                times[mode].append(time_start(opts.model, work / f"{mode}{i}.log",
                                              mode == "eager"))
                print(f"pair {i} {mode:8s} {times[mode][-1]:.1f}s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    eager, compiled = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"\n| mode | time to /health 200 (median of {opts.pairs}) |\n|---|---:|")
    print(f"| eager | {eager:.1f} s |\n| compiled | {compiled:.1f} s |")
    print(f"compiled / eager = {compiled / eager:.2f}")


if __name__ == "__main__":
    main()
