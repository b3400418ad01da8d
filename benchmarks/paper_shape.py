"""The paper's shape on this machine: TinyLlama-1.1B-shaped random experts (hidden 2048,
intermediate 5632, 22 layers, 32 heads, 4 KV heads, vocab 32000) x 4, bf16, through every
step a user runs, each as its own subprocess, with wall time and peak RSS.

    flock /tmp/bigmem.lock flock /tmp/vllm-engine.lock \\
        .venv/bin/python benchmarks/paper_shape.py [--root DIR] [--steps train,verify,...]

Steps: `mofe train` (mergekit merge + 2 steps of batch 1 x 128 tokens + save), `mofe verify`,
`mofe registry register`, `mofe serve` (until one chat request through the openai client
has been answered) and `mofe batch` (40 MedMCQA-format questions, offline vLLM). Peak RSS
is the largest sum of RSS over the step's process tree, sampled every 0.2 s with psutil
(shared pages of vLLM's processes count once per process). The random experts are built
once under --root by training/test_models.py (no hub) and reused by later runs.
Not part of `make test`: it needs most of the machine's memory for about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mofe_serve.server_process import MofeServer  # noqa: E402

MOFE = str(Path(sys.executable).with_name("mofe"))
STEPS = ("train", "verify", "register", "serve", "batch")
GIB = 1024 ** 3


class PeakRss:
    """Largest RSS summed over a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, float]] = []  # (seconds, GiB), one per second
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            now = time.monotonic() - self.t0
            if not self.timeline or now - self.timeline[-1][0] >= 1.0:
                self.timeline.append((round(now, 1), round(total / GIB, 2)))
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(name: str, argv: list[str], log: Path, ok=(0,)) -> dict:
    print(f"== {name}: {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env())
        peak = PeakRss(proc.pid)
        rc = proc.wait()
    result = {"step": name, "wall_s": time.monotonic() - t0, "peak_rss_gib": peak.stop() / GIB,
              "rc": rc, "log": str(log), "timeline": peak.timeline}
    if rc not in ok:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{name} failed with exit {rc}:\n{tail}")
    return result


def register_bytes(result: dict, checkpoint: Path, registry: Path) -> dict:
    """What registering stored: new bytes on disk vs bytes hard-linked from the checkpoint
    (each inode once, `registry_dedup.dir_bytes`), and the checkpoint's own size."""
    from benchmarks.registry_dedup import dir_bytes

    stored = dir_bytes(registry)
    both = dir_bytes(registry, checkpoint)
    ckpt = dir_bytes(checkpoint)
    result.update(checkpoint_gib=ckpt / GIB, stored_gib=stored / GIB,
                  written_gib=(both - ckpt) / GIB, linked_from_checkpoint_gib=
                  (stored - (both - ckpt)) / GIB)
    print(f"register: checkpoint {ckpt / GIB:.2f} GiB; registry {stored / GIB:.2f} GiB, of "
          f"which {(both - ckpt) / GIB:.2f} GiB newly written and "
          f"{(stored - both + ckpt) / GIB:.2f} GiB hard links to the checkpoint's files",
          flush=True)
    return result


def serve(ckpt: Path, log: Path) -> dict:
    from openai import OpenAI

    print(f"== serve: mofe serve {ckpt} --enforce-eager", flush=True)
    t0 = time.monotonic()
    server = MofeServer(ckpt, log, extra=["--enforce-eager"])
    peak = PeakRss(server.proc.pid)
    try:
        server.wait_ready(timeout=900)
        ready = time.monotonic() - t0
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, max_tokens=16, temperature=0,
            messages=[{"role": "user", "content": "What is heparin used for?"}])
        assert reply.choices[0].message.content is not None
        wall = time.monotonic() - t0
    finally:
        leftovers = server.stop()
    return {"step": "serve", "wall_s": wall, "ready_s": ready,
            "peak_rss_gib": peak.stop() / GIB, "rc": 0, "log": str(log),
            "leftovers": leftovers}


def medmcqa_rows(n: int) -> list[dict]:
    """`n` MedMCQA-format rows: the kit's medical questions, repeated with new ids."""
    import random

    from training.kit_data import load_facts
    from training.kit_data import medmcqa_rows as kit_rows

    kit = kit_rows(load_facts(), random.Random(0))
    return [{**kit[i % len(kit)], "id": f"q{i}"} for i in range(n)]


def build(root: Path) -> Path:
    config = root / "mofe.yaml"
    if config.is_file():
        print(f"reusing the random experts under {root}")
        return config
    code = ("import sys; from pathlib import Path; "
            "from training.test_models import TINYLLAMA, build_random_experts; "
            "build_random_experts(Path(sys.argv[1]), TINYLLAMA)")
    staging = root.with_name(root.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result = run("build", [sys.executable, "-c", code, str(staging)], staging.parent /
                 f"{root.name}.build.log")
    print(f"built in {result['wall_s']:.0f} s, peak {result['peak_rss_gib']:.1f} GiB")
    staging.rename(root)
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/mofe-paper-shape"))
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of "
                    + ",".join(STEPS))
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="extra `mofe train --set` override (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    steps = args.steps.split(",")
    root = args.root.resolve()
    config = build(root)
    runs = root / "runs"
    merged, out, registry = runs / "merged", runs / "mofe", runs / "registry"
    logs = runs / "logs"
    if "train" in steps:
        shutil.rmtree(runs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    if "train" in steps:
        sets = [f"output_dir={out}", f"merge.output={merged}", *args.sets]
        results.append(run("train", [MOFE, "train", str(config),
                                     *[a for s in sets for a in ("--set", s)]],
                           logs / "train.log"))
    if "verify" in steps:
        results.append(run("verify", [MOFE, "verify", str(out)], logs / "verify.log"))
    if "register" in steps:
        shutil.rmtree(registry, ignore_errors=True)
        results.append(register_bytes(
            run("register", [MOFE, "registry", "--registry", str(registry), "register",
                             str(out), "--name", "paper"], logs / "register.log"),
            out, registry))
    if "serve" in steps:
        results.append(serve(out, logs / "serve.log"))
    if "batch" in steps:
        questions = runs / "medmcqa.jsonl"
        questions.write_text("".join(json.dumps(r) + "\n" for r in medmcqa_rows(40)))
        answers = runs / "batch" / "answers.jsonl"
        shutil.rmtree(answers.parent, ignore_errors=True)
        answers.parent.mkdir(parents=True)
        results.append(run("batch", [MOFE, "batch", str(out), "--task", "medmcqa", "--input",
                                     str(questions), "--output", str(answers)],
                           logs / "batch.log"))
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: list[dict]) -> None:
    print("\n| step | wall s | peak RSS GiB (all processes) | note |")
    print("|---|---|---|---|")
    for r in results:
        note = f"ready in {r['ready_s']:.0f} s" if "ready_s" in r else ""
        print(f"| {r['step']} | {r['wall_s']:.0f} | {r['peak_rss_gib']:.2f} | {note} |")


if __name__ == "__main__":
    main()
