"""`make bench`: every benchmark, one after another, output kept in benchmarks/results/.

    .venv/bin/python benchmarks/run_all.py [NAME ...]

Each script prints ratios measured side by side in one run; the tables in
benchmarks/README.md are copied from these logs. Run on an otherwise idle machine.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "serve_overhead": ["serve_overhead.py", "--pairs", "8"],
    "serve_latency": ["serve_latency.py"],
    "offline_generation": ["offline_generation.py"],
    "batch_qa": ["batch_qa.py"],
    "batch_startup": ["batch_startup.py"],
    "train_methods": ["train_methods.py"],
    "startup": ["startup.py"],
    "registry_dedup": ["registry_dedup.py", "--rounds", "2"],
    "family_serving": ["family_serving.py", "--pairs", "4", "--eager"],
}


def main() -> None:
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    failed = []
    for name in names:
        script, *args = BENCHMARKS[name]
        print(f"== {name} ({machine})", flush=True)
        start = time.perf_counter()
        with open(results / f"{name}.txt", "w") as log:
            log.write(f"# {script} {' '.join(args)} on {machine}\n")
            log.flush()
            proc = subprocess.run([sys.executable, str(HERE / script), *args], stdout=log,
                                  stderr=subprocess.STDOUT)
        print(f"   exit {proc.returncode} after {time.perf_counter() - start:.0f}s -> "
              f"{results / (name + '.txt')}", flush=True)
        if proc.returncode:
            failed.append(name)
    if failed:
        raise SystemExit(f"failed: {failed}")


if __name__ == "__main__":
    main()
