"""Train mofe / full / lora / dora on the same merged model and data for the same steps.

    .venv/bin/python benchmarks/train_methods.py [--hidden-size 512 --layers 6 --experts 4]
        [--steps 20] [--batch-size 4] [--json results.json]

One fresh process per method and round (so peak RSS is that method's own); rounds alternate
the method order so drifting machine load hits every method alike. Prints trainable params,
median wall and CPU seconds per optimizer step, peak RSS, final eval loss and ratios to full
fine-tuning. CPU time is the steadier number on a shared machine. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("full", "mofe", "lora", "dora")


def worker(args: argparse.Namespace) -> None:
    """Run one method in this process and print one JSON line of results."""
    from transformers import TrainerCallback

    from model_registry.manifest import Manifest
    from training.config import load_config
    from training.train import run_training

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

            self.cpu: list[float] = []
            self._c = 0.0

        def on_step_begin(self, *a, **k):
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._t)
            self.cpu.append(time.process_time() - self._c)

    import torch

    torch.set_num_threads(args.threads)
    timer = StepTimer()
    out = Path(tempfile.mkdtemp(dir=args.work)) / f"run-{args.worker}"
    cfg = load_config(Path(args.kit) / "mofe.yaml", [
        f"method={args.worker}", f"output_dir={out}", f"merge.output={args.merged}",
        f"training.max_steps={args.steps}", f"training.batch_size={args.batch_size}",
        f"training.eval_every={args.steps}", f"training.save_every={args.steps + 1}",
        f"training.log_every={args.steps}", "data.max_length=256"])
    run_training(cfg, callbacks=[timer])
    m = Manifest.load(out)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print("RESULT " + json.dumps({  # the first 2 steps include lazy init: left out
        "method": args.worker, "trainable": m.training.trainable_params.trainable,
        "total": m.params.total, "wall": timer.times[2:] or timer.times,
        "cpu": timer.cpu[2:] or timer.cpu, "peak_rss_mb": rss_mb,
        "eval_loss": m.training.final_eval_loss}), flush=True)


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    from training.config import load_config
    from training.kit import KitSizes, build_kit
    from training.merge import merge_experts

    sizes = KitSizes(hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                     num_layers=args.layers, base_steps=10, expert_steps=5)
    kit = build_kit(Path(args.work) / "kit", experts=args.experts, seed=0, sizes=sizes)
    merged = Path(args.work) / "merged"
    merge_experts(load_config(kit / "mofe.yaml").merge, merged)
    return kit, merged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden-size", type=int, default=384)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker; 1 keeps timings stable on a shared machine")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--kit", help=argparse.SUPPRESS)
    p.add_argument("--merged", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="mofe-train-bench-") as work:
        args.work = work
        kit, merged = prepare(args)
        runs: list[dict] = []
        methods = args.methods.split(",")
        for r in range(args.rounds):
            for method in methods if r % 2 == 0 else methods[::-1]:
                runs.append(run_worker(method, args, kit, merged))
                print(f"round {r + 1}: {method} done", file=sys.stderr)
    results = []
    for method in methods:
        mine = [x for x in runs if x["method"] == method]
        wall = [t for x in mine for t in x["wall"]]
        cpu = [t for x in mine for t in x["cpu"]]
        results.append({**mine[-1], "s_per_step": statistics.median(wall),
                        "cpu_per_step": statistics.median(cpu),
                        "peak_rss_mb": max(x["peak_rss_mb"] for x in mine)})
    report(results, args)


def run_worker(method: str, args: argparse.Namespace, kit: Path, merged: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--work", args.work, "--kit", str(kit),
           "--merged", str(merged), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"{method} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def report(results: list[dict], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    full = next((r for r in results if r["method"] == "full"), None)
    table = Table(title=f"Training methods: hidden {args.hidden_size}, {args.layers} layers, "
                        f"{args.experts} experts, {args.steps} steps x batch {args.batch_size}, "
                        f"{args.threads} thread(s), {args.rounds} rounds")
    for col in ("method", "trainable params", "median s/step", "median CPU s/step",
                "peak RSS MB", "final eval loss", "s/step vs full", "CPU vs full", "RSS vs full"):
        table.add_column(col, justify="right")

    def ratio(r: dict, key: str) -> str:
        return f"{r[key] / full[key]:.2f}x" if full else "-"

    for r in results:
        table.add_row(r["method"], f"{r['trainable'] / 1e6:.2f}M / {r['total'] / 1e6:.2f}M",
                      f"{r['s_per_step']:.3f}", f"{r['cpu_per_step']:.3f}",
                      f"{r['peak_rss_mb']:.0f}", f"{r['eval_loss']:.4f}",
                      ratio(r, "s_per_step"), ratio(r, "cpu_per_step"), ratio(r, "peak_rss_mb"))
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
