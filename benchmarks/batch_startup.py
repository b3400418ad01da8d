"""Where `mofe batch`'s model load goes: vLLM's default multi-process engine vs the in-process
engine `mofe batch` now builds, phase by phase, on the same checkpoint.

    python benchmarks/batch_startup.py [--model DIR] [--repeats 2]

Each run is a fresh interpreter (`--phase-run MODE`) that times, from its own start:
importing vLLM, building the engine config (model-class inspection included), building the
`vllm.LLM` (process spawns, weight load, KV-cache allocation), and a first small scoring
call; vLLM's own log lines give the weight-load and engine-init times. The model-info cache
vLLM keeps for a class registered by import string is removed before each run, as after an
install or any change to our model module (`--warm-cache` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("multiprocess", "in-process")


def phase_run(mode: str, model: str) -> dict:
    t0 = float(os.environ["BENCH_T0"])
    marks = {"interpreter": time.time() - t0}
    import vllm  # noqa: F401

    marks["import vllm"] = time.time() - t0
    from mofe_batch.scoring import build_item
    from mofe_serve import engine

    plan = engine.plan_offline_cpus(None) if mode == "in-process" else None
    llm = engine.build_llm(model, cpu_plan=plan, dtype="float32", enforce_eager=True,
                           enable_prefix_caching=True)
    marks["LLM ready"] = time.time() - t0
    from vllm import SamplingParams, TokensPrompt

    item = build_item(llm.get_tokenizer(), "Question: which organ? Answer:", [" A", " B"])
    llm.generate([TokensPrompt(prompt_token_ids=item.context)],
                 SamplingParams(max_tokens=1, logprob_token_ids=[c[0] for c in item.continuations]),
                 use_tqdm=False)
    marks["first score"] = time.time() - t0
    engine.close_llm(llm)
    return marks


def _log_seconds(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def run(mode: str, model: str, warm: bool) -> dict:
    if not warm:
        cache = Path(os.environ.get("VLLM_CACHE_ROOT", Path.home() / ".cache/vllm")) / "modelinfos"
        (cache / "mofe_serve-model-MoFEMixtralForCausalLM.json").unlink(missing_ok=True)
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--phase-run", mode, model],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "BENCH_T0": repr(t0), "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{mode} run failed")
    log = proc.stdout + proc.stderr  # vLLM logs to stdout
    marks = json.loads(next(line for line in proc.stdout.splitlines()
                            if line.startswith("RESULT "))[len("RESULT "):])
    marks["weights (vLLM log)"] = _log_seconds(r"Loading weights took ([\d.]+) seconds", log)
    marks["engine init (vLLM log)"] = _log_seconds(r"init engine .* took ([\d.]+) s", log)
    marks["processes"] = len(set(re.findall(r"\(\w+(?:-\d+)? pid=(\d+)\)", log)))
    return marks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warm-cache", action="store_true")
    p.add_argument("--phase-run", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase_run:
        result = phase_run(*args.phase_run)
        print("RESULT " + json.dumps(result), flush=True)
        return
    model = args.model
    if model is None:
        model = Path(tempfile.mkdtemp(prefix="batch-startup-")) / "mofe-mixtral"
        sys.path.insert(0, str(ROOT))
        from training.kit import KitSizes
        from training.test_models import build_random_mixtral

        build_random_mixtral(model, KitSizes(hidden_size=512, intermediate_size=1024,
                                             num_layers=6, num_heads=8, num_kv_heads=8))
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for rep in range(args.repeats):
        for mode in (MODES if rep % 2 == 0 else MODES[::-1]):  # alternate the order
            runs[mode].append(run(mode, str(model.resolve()), args.warm_cache))
            print(mode, json.dumps(runs[mode][-1]), flush=True)
    keys = [k for k in runs[MODES[0]][0] if k != "processes"]
    print("\n| seconds from process start | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for k in keys:
        cells = []
        for m in MODES:
            vals = [r[k] for r in runs[m] if r[k] is not None]
            cells.append(f"{statistics.median(vals):.1f}" if vals else "-")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("| vLLM processes logging | " + " | ".join(
        str(runs[m][0]["processes"]) for m in MODES) + " |")


if __name__ == "__main__":
    main()
