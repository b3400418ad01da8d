"""Benchmark `mofe batch` against lm-evaluation-harness on a MoFE Mixtral.

    python benchmarks/batch_qa.py [--model DIR] [--rows 2000] [--mmlu-rows 600]
                                  [--threads N] [--repeats 2] [--out DIR] [--json FILE]

1. The model: by default a random MoFE Mixtral built by `training.test_models` (6 layers,
   hidden 512, FFN 1024, 4 experts, top-2, fp32, the kit tokenizer), scored through our
   plugin with routing counted. `--model DIR` scores another checkpoint (a dense one is
   labelled "dense" in the output).
2. Two cases, from deterministic project-written generators:
   - zero-shot MedMCQA-format rows (`--rows`),
   - 5-shot MMLU-format rows (`--mmlu-rows`, 4 subjects, shots = the first 5 dev rows of the
     subject, lm-eval's `first_n`), where every question of a subject shares its prefix.
3. Per case and repeat, both tools run as fresh processes, alternating which goes first:
   - `mofe batch` (vLLM offline, `--threads N`); scoring time = its report's
     `scoring_seconds` (after the model is loaded: reading, prompts, tokenizing, engine,
     writing);
   - lm-eval 0.4.13's HF backend (`HFLM`, batch 16, `torch.set_num_threads(N)`), driven
     here with requests built from lm-eval's own prompt functions (its `utils_medmcqa` and
     its MMLU template); scoring time = `HFLM.loglikelihood` on the built requests only (its
     task index and set-up are excluded, as our model load is).
   Both get the same thread budget N (default: every core this process may use).
   End to end = the whole process, start-up and model load included (lm-eval's: import,
   model load, request building, scoring; no task index).
4. Prints rates, ratios with their spread over repeats, and the share of identical
   predictions; `--json` writes everything.
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
LMEVAL_BATCH = 16

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
# MMLU subject names (lm-eval's descriptions are built from them)
_MMLU = {"anatomy": "Anatomy", "college_medicine": "Physiology",
         "clinical_knowledge": "Pharmacology", "virology": "Microbiology"}


def _question(rng: random.Random, subject: str) -> tuple[str, list[str]]:
    things, relations = _SUBJECTS[subject]
    return (f"{rng.choice(things).capitalize()} {rng.choice(relations)}:",
            rng.sample(_ANSWERS, 4))


def generate_rows(n: int, seed: int = 0) -> list[dict]:
    """Deterministic MedMCQA-format rows (cop 0-3), written by this project."""
    rng = random.Random(seed)
    subjects = sorted(_SUBJECTS)
    rows = []
    for i in range(n):
        subject = subjects[i % len(subjects)]
        question, options = _question(rng, subject)
        rows.append({"id": f"bench-{i:05d}", "question": question, "opa": options[0],
                     "opb": options[1], "opc": options[2], "opd": options[3],
                     "cop": rng.randrange(4), "choice_type": "single", "exp": "",
                     "subject_name": subject, "topic_name": "generated"})
    return rows


def generate_mmlu_rows(n: int, seed: int = 1, prefix: str = "mmlu") -> list[dict]:
    """Deterministic MMLU-format rows (question, subject, choices, answer 0-3)."""
    rng = random.Random(seed)
    subjects = sorted(_MMLU)
    rows = []
    for i in range(n):
        subject = subjects[i % len(subjects)]
        question, options = _question(rng, _MMLU[subject])
        rows.append({"id": f"{prefix}-{i:05d}", "question": question, "subject": subject,
                     "choices": options, "answer": rng.randrange(4)})
    return rows


# --- lm-eval side (run as a subprocess: its own torch threads, its own start-up) -----------

def lmeval_driver(spec: dict) -> dict:
    t0 = time.time()
    import jinja2
    import torch
    import yaml

    torch.set_num_threads(spec["threads"])
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks.medmcqa.utils_medmcqa import doc_to_text as medmcqa_text

    imported = time.time()
    lm = HFLM(pretrained=spec["model"], dtype=spec["dtype"], batch_size=LMEVAL_BATCH,
              device="cpu")
    loaded = time.time()
    rows = [json.loads(line) for line in open(spec["input"])]
    if spec["task"] == "medmcqa":
        contexts = [medmcqa_text(r) for r in rows]
    else:  # lm-eval's MMLU: description + first_n dev shots + doc_to_text
        tmpl_file = Path(lm_eval.__file__).parent / "tasks/mmlu/default/_default_template_yaml"
        tmpl = jinja2.Template(yaml.safe_load(tmpl_file.read_text())["doc_to_text"])
        dev = [json.loads(line) for line in open(spec["dev"])]
        contexts = []
        for r in rows:
            shots = [d for d in dev if d["subject"] == r["subject"]][:spec["shots"]]
            description = ("The following are multiple choice questions (with answers) about "
                           f"{r['subject'].replace('_', ' ')}.\n\n")
            contexts.append(description + "".join(
                tmpl.render(**d) + " " + "ABCD"[d["answer"]] + "\n\n" for d in shots)
                + tmpl.render(**r))
    requests = [Instance(request_type="loglikelihood", doc=r, arguments=(ctx, " " + letter),
                         idx=j, metadata=(spec["task"], i, 1))
                for i, (r, ctx) in enumerate(zip(rows, contexts, strict=True))
                for j, letter in enumerate("ABCD")]
    built = time.time()
    results = lm.loglikelihood(requests, disable_tqdm=True)
    scored = time.time()
    preds = {}
    for i, r in enumerate(rows):
        lls = [results[4 * i + j][0] for j in range(4)]
        preds[r["id"]] = {"pred": max(range(4), key=lambda k: lls[k]), "lls": lls}
    return {"import_s": imported - t0, "load_s": loaded - imported, "build_s": built - loaded,
            "eval_s": scored - built, "preds": preds, "threads": torch.get_num_threads()}


def run_lmeval(spec: dict, work: Path) -> dict:
    spec_file, out = work / "lmeval_spec.json", work / "lmeval_out.json"
    spec_file.write_text(json.dumps(spec))
    start = time.time()
    subprocess.run([sys.executable, __file__, "--lmeval-driver", str(spec_file), str(out)],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                    "TOKENIZERS_PARALLELISM": "false"})
    result = json.loads(out.read_text())
    result["wall_s"] = time.time() - start
    return result


# --- mofe side -------------------------------------------------------------------------------

def run_mofe(spec: dict, work: Path) -> dict:
    output = work / f"mofe-{spec['task']}.jsonl"
    for suffix in ("", ".report.json", ".report.md", ".provenance.json"):
        Path(str(output) + suffix).unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "mofe"), "batch", spec["model"], "--task",
           spec["task"], "--input", spec["input"], "--output", str(output), "--dtype",
           spec["dtype"], "--threads", str(spec["threads"]), "--chunk-size",
           str(spec["chunk_size"]), "--no-progress"]
    if spec.get("shots"):
        cmd += ["--shots", str(spec["shots"]), "--dev", spec["dev"]]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.time() - start
    report = json.loads(Path(str(output) + ".report.json").read_text())
    rows = [json.loads(line) for line in output.open()]
    return {"wall_s": wall, "eval_s": report["scoring_seconds"],
            "engine_s": report["engine_seconds"], "load_s": report["load_seconds"],
            "prompt_tokens": report["prompt_tokens_this_run"],
            "computed_tokens": report["computed_tokens_this_run"],
            "threads": report["threads"], "routing_counts": report["routing_counts"],
            "preds": {r["id"]: "ABCD".index(r["prediction"]) for r in rows},
            "lls": {r["id"]: list(r["loglikelihoods"].values()) for r in rows}}


def compare(mofe: dict, lmeval: dict) -> dict:
    n = len(lmeval["preds"])
    same = sum(mofe["preds"].get(k) == v["pred"] for k, v in lmeval["preds"].items())
    max_diff = max(abs(a - b) for k, v in lmeval["preds"].items()
                   for a, b in zip(mofe["lls"][k], v["lls"], strict=True))
    r = {"questions": n, "mofe_qps": n / mofe["eval_s"], "lmeval_qps": n / lmeval["eval_s"],
         "mofe_qps_e2e": n / mofe["wall_s"], "lmeval_qps_e2e": n / lmeval["wall_s"],
         "mofe_load_s": mofe["load_s"], "mofe_wall_s": mofe["wall_s"],
         "mofe_engine_s": mofe["engine_s"], "lmeval_wall_s": lmeval["wall_s"],
         "lmeval_load_s": lmeval["import_s"] + lmeval["load_s"],
         "computed_share": mofe["computed_tokens"] / max(mofe["prompt_tokens"], 1),
         "agreement": same / n, "max_abs_ll_diff": max_diff}
    r["ratio"] = r["mofe_qps"] / r["lmeval_qps"]
    r["ratio_e2e"] = r["mofe_qps_e2e"] / r["lmeval_qps_e2e"]
    return r


def _spread(values: list[float]) -> str:
    return (f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"
            if len(values) > 1 else f"{values[0]:.3g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="checkpoint (default: build the MoFE Mixtral)")
    p.add_argument("--rows", type=int, default=2000, help="zero-shot MedMCQA rows")
    p.add_argument("--mmlu-rows", type=int, default=600, help="5-shot MMLU rows")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of both tools")
    p.add_argument("--cases", default="zero-shot,5-shot")
    p.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the numbers here")
    p.add_argument("--lmeval-driver", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.lmeval_driver:
        spec, out = args.lmeval_driver
        Path(out).write_text(json.dumps(lmeval_driver(json.loads(Path(spec).read_text()))))
        return
    work = args.out or Path(tempfile.mkdtemp(prefix="batch-qa-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = work / "mofe-mixtral"
        if not (model / "config.json").is_file():
            sys.path.insert(0, str(ROOT))
            from training.kit import KitSizes
            from training.test_models import build_random_mixtral

            build_random_mixtral(model, KitSizes(hidden_size=512, intermediate_size=1024,
                                                 num_layers=6, num_heads=8, num_kv_heads=8),
                                 dtype="float32")
    model = model.resolve()
    config = json.loads((model / "config.json").read_text())
    kind = ("MoFE Mixtral, routing counted" if config.get("model_type") == "mixtral"
            else f"dense {config.get('model_type')}")
    cases = {}
    (work / "medmcqa.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in generate_rows(args.rows)))
    cases["zero-shot"] = {"task": "medmcqa", "input": str(work / "medmcqa.jsonl")}
    (work / "mmlu.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in generate_mmlu_rows(args.mmlu_rows)))
    (work / "mmlu_dev.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in generate_mmlu_rows(4 * args.shots, seed=2, prefix="dev")))
    cases["5-shot"] = {"task": "mmlu", "input": str(work / "mmlu.jsonl"), "shots": args.shots,
                       "dev": str(work / "mmlu_dev.jsonl")}
    print(f"model: {model} ({kind}, {config.get('num_hidden_layers')} layers, hidden "
          f"{config.get('hidden_size')}, {args.dtype}); thread budget: {args.threads} for both "
          f"tools (of {os.cpu_count()} cores); lm-eval 0.4.13 HF batch {LMEVAL_BATCH}",
          flush=True)
    results: dict[str, list[dict]] = {}
    for name in args.cases.split(","):
        spec = {**cases[name], "model": str(model), "dtype": args.dtype,
                "threads": args.threads, "chunk_size": args.chunk_size}
        for rep in range(args.repeats):  # alternate which tool goes first: the machine drifts
            if rep % 2 == 0:
                mofe, lmeval = run_mofe(spec, work), run_lmeval(spec, work)
            else:
                lmeval = run_lmeval(spec, work)
                mofe = run_mofe(spec, work)
            r = compare(mofe, lmeval)
            r["mofe_threads"] = mofe["threads"]
            r["lmeval_threads"] = lmeval["threads"]
            results.setdefault(name, []).append(r)
            print(f"{name} run {rep + 1}: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
                flush=True)
    print("\n| case | questions | mofe q/s | lm-eval q/s | scoring ratio | end-to-end ratio "
          "| mofe load s | computed / prompt tokens | identical predictions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {runs[0]['questions']} | {_spread([r['mofe_qps'] for r in runs])} | "
              f"{_spread([r['lmeval_qps'] for r in runs])} | "
              f"{_spread([r['ratio'] for r in runs])}x | "
              f"{_spread([r['ratio_e2e'] for r in runs])}x | "
              f"{_spread([r['mofe_load_s'] for r in runs])} | "
              f"{statistics.median(r['computed_share'] for r in runs):.2f} | "
              f"{min(r['agreement'] for r in runs):.2%} |")
    if args.json:
        args.json.write_text(json.dumps({"model": str(model), "kind": kind,
                                         "threads": args.threads, "dtype": args.dtype,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
