"""Benchmark `mofe batch` against lm-evaluation-harness on MedMCQA-format rows.

    python benchmarks/batch_qa.py MODEL_DIR [--rows 600] [--dtype float32] [--out DIR]

1. Writes N MedMCQA-format rows from a deterministic, project-written generator.
2. Scores them with `mofe batch` (vLLM offline, subprocess) and with lm-eval's HF backend
   (`lm_eval` 0.4.x in its own venv, `LMEVAL_PYTHON`, default /tmp/lmeval-venv/bin/python)
   over a local task definition (`dataset_path: json`, lm-eval's own medmcqa doc_to_text),
   with --log_samples-style per-document results. No network.
3. Prints questions/s of both (scoring only, and end to end), their ratio, and the share of
   identical predictions; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LMEVAL_PYTHON = os.environ.get("LMEVAL_PYTHON", "/tmp/lmeval-venv/bin/python")

_SUBJECTS = {
    "Pharmacology": (["aspirin", "metformin", "warfarin", "insulin", "morphine", "atropine",
                      "digoxin", "heparin", "lithium", "propranolol"],
                     ["is used to treat", "is contraindicated in", "commonly causes",
                      "acts by inhibiting"]),
    "Anatomy": (["the liver", "the kidney", "the heart", "the femur", "the spleen", "the lung",
                 "the pancreas", "the thyroid", "the brain", "the stomach"],
                ["is located in", "is supplied by", "is drained by", "develops from"]),
    "Physiology": (["the nephron", "the alveolus", "the neuron", "the hepatocyte",
                    "the platelet", "the erythrocyte", "the myocyte", "the osteoclast"],
                   ["mainly regulates", "is stimulated by", "secretes", "depends on"]),
    "Microbiology": (["tuberculosis", "malaria", "cholera", "influenza", "tetanus", "typhoid"],
                     ["is caused by", "is diagnosed by", "spreads through", "is prevented by"]),
}
_ANSWERS = ["the upper abdomen", "blood clots", "high blood pressure", "the chest", "calcium",
            "a bacterium", "a virus", "the portal vein", "insulin release", "fever",
            "the mesoderm", "acetylcholine", "oxygen", "heart failure", "the lymph nodes",
            "a parasite", "vaccination", "a stool culture", "the skin", "glucose"]


def generate_rows(n: int, seed: int = 0) -> list[dict]:
    """Deterministic MedMCQA-format rows (cop 0-3), written by this project."""
    rng = random.Random(seed)
    subjects = sorted(_SUBJECTS)
    rows = []
    for i in range(n):
        subject = subjects[i % len(subjects)]
        things, relations = _SUBJECTS[subject]
        options = rng.sample(_ANSWERS, 4)
        rows.append({"id": f"bench-{i:05d}", "question": f"{rng.choice(things).capitalize()} "
                     f"{rng.choice(relations)}:", "opa": options[0], "opb": options[1],
                     "opc": options[2], "opd": options[3], "cop": rng.randrange(4),
                     "choice_type": "single", "exp": "", "subject_name": subject,
                     "topic_name": "generated"})
    return rows


_TASK_YAML = """task: medmcqa_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
test_split: validation
doc_to_text: !function utils_medmcqa.doc_to_text
doc_to_target: cop
doc_to_choice: ['A', 'B', 'C', 'D']
metric_list:
  - metric: acc
  - metric: acc_norm
"""

_DRIVER = r"""
import json, sys, time
t0 = time.time()
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
model, dtype, include, out, batch = sys.argv[1:6]
t1 = time.time()
lm = HFLM(pretrained=model, dtype=dtype, batch_size=int(batch), device="cpu")
t2 = time.time()
res = simple_evaluate(model=lm, tasks=["medmcqa_local"], log_samples=True,
                      task_manager=TaskManager(include_path=include))
t3 = time.time()
preds = {}
for s in res["samples"]["medmcqa_local"]:
    lls = [r[0] for r in s["filtered_resps"]]
    preds[s["doc_id"]] = {"pred": max(range(len(lls)), key=lambda i: lls[i]), "lls": lls}
json.dump({"import_s": t1 - t0, "load_s": t2 - t1, "eval_s": t3 - t2, "preds": preds,
           "acc": res["results"]["medmcqa_local"].get("acc,none")}, open(out, "w"))
"""


def run_lmeval(model: str, data: Path, work: Path, dtype: str, batch_size: int) -> dict:
    include = work / "lmeval_tasks"
    include.mkdir(exist_ok=True)
    utils = subprocess.run(
        [LMEVAL_PYTHON, "-c", "import lm_eval.tasks.medmcqa.utils_medmcqa as u; print(u.__file__)"],
        check=True, capture_output=True, text=True).stdout.strip()
    (include / "utils_medmcqa.py").write_text(Path(utils).read_text())  # lm-eval's own prompt
    (include / "medmcqa_local.yaml").write_text(_TASK_YAML.format(data=data))
    (work / "driver.py").write_text(_DRIVER)
    out = work / "lmeval.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(work / "hf_datasets")}
    start = time.time()
    subprocess.run([LMEVAL_PYTHON, str(work / "driver.py"), model, dtype, str(include),
                    str(out), str(batch_size)], check=True, env=env)
    result = json.loads(out.read_text())
    result["wall_s"] = time.time() - start
    return result


def run_mofe(model: str, data: Path, work: Path, dtype: str, chunk: int) -> dict:
    output = work / "mofe.jsonl"
    output.unlink(missing_ok=True)
    start = time.time()
    subprocess.run([str(Path(sys.executable).parent / "mofe"), "batch", model, "--task", "medmcqa",
                    "--input", str(data), "--output", str(output), "--dtype", dtype,
                    "--chunk-size", str(chunk), "--no-progress"],
                   check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    report = json.loads(Path(str(output) + ".report.json").read_text())
    rows = [json.loads(line) for line in output.open()]
    return {"wall_s": time.time() - start, "eval_s": report["scoring_seconds"],
            "load_s": report["load_seconds"], "acc": report["overall"]["acc"],
            "preds": {r["position"] - 1: "ABCD".index(r["prediction"]) for r in rows},
            "lls": {r["position"] - 1: list(r["loglikelihoods"].values()) for r in rows}}


def _compare(mofe: dict, lmeval: dict) -> dict:
    lm_preds = {int(k): v["pred"] for k, v in lmeval["preds"].items()}
    n = len(lm_preds)
    same = sum(mofe["preds"].get(k) == v for k, v in lm_preds.items())
    max_diff = max(abs(a - b) for k, v in lmeval["preds"].items()
                   for a, b in zip(mofe["lls"][int(k)], v["lls"], strict=True))
    r = {"mofe_qps_scoring": n / mofe["eval_s"], "mofe_qps_end_to_end": n / mofe["wall_s"],
         "lmeval_qps_scoring": n / lmeval["eval_s"],
         "lmeval_qps_end_to_end": n / lmeval["wall_s"],
         "mofe_load_s": mofe["load_s"], "lmeval_load_s": lmeval["load_s"],
         "agreement": same / n, "max_abs_loglikelihood_diff": max_diff,
         "acc_mofe": mofe["acc"], "acc_lmeval": lmeval["acc"]}
    r["ratio_scoring"] = r["mofe_qps_scoring"] / r["lmeval_qps_scoring"]
    r["ratio_end_to_end"] = r["mofe_qps_end_to_end"] / r["lmeval_qps_end_to_end"]
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--lmeval-batch-size", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of both tools")
    p.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the numbers here")
    args = p.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="batch-qa-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "medmcqa_bench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(args.rows)))
    model = str(Path(args.model).resolve())
    runs = []
    for _ in range(args.repeats):  # alternate the two tools: this machine drifts over minutes
        mofe = run_mofe(model, data, work, args.dtype, args.chunk_size)
        lmeval = run_lmeval(model, data, work, args.dtype, args.lmeval_batch_size)
        runs.append(_compare(mofe, lmeval))
    result = {"rows": args.rows, "dtype": args.dtype, "model": model, "runs": runs}
    for key in ("ratio_scoring", "ratio_end_to_end", "mofe_qps_scoring",
                "lmeval_qps_scoring"):
        result[f"median_{key}"] = statistics.median(r[key] for r in runs)
    result["min_agreement"] = min(r["agreement"] for r in runs)
    for i, run in enumerate(runs):
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in run.items()))
    for key, value in result.items():
        if key != "runs":
            print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
