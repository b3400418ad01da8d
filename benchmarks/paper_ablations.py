"""The MoFE paper's two ablations, reproduced on the tiny kit with the project's own training.

    .venv/bin/python benchmarks/paper_ablations.py [--seeds 3] [--steps 60] [--work DIR]
        [--out benchmarks/results]

1. Expert composition: four experts, of which 0, 1, 2 or 3 are medical (the rest general),
   merged by `training.merge` (mergekit, `hidden` gate from the kit's prompts), then MoFE
   instruction tuning (`training.train.run_training`, method mofe: embeddings, attention,
   norms, router and lm_head train; experts frozen) on the kit's instruction data. Reported:
   medical multiple-choice accuracy on facts of entities the tuning data never mentions, in
   phrasings no model read (data/knowledge.jsonl, split "heldout"), and the medical share of
   routed slots on those questions (transformers router logits, top-k per token and layer).
   Paper (MedMCQA): 0.3488 -> 0.3636 as medical experts are added, not linearly.
2. Post-pretraining: the kit's 2-medical/2-general merge, either tuned directly for STEPS
   steps, or first post-pretrained for STEPS/2 steps (data format `text`, continued LM
   training of the non-FFN weights on the general topics' text, at the tuning lr and at
   10x) and then tuned for STEPS/2.
   Paper (MedMCQA): direct 0.3529, post-pretrained first 0.2589 (37% lower).

The experts come from one 8-expert kit (`mofe dev tiny-experts --experts 8`: each topic
twice, the second copy trained with another seed), built once. Seeds vary the tuning run
(data order, eval split). Writes paper_ablations.{json,md,png} under --out and prints the
table. Not a test; run it under the engine lock on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MEDICAL_COUNTS = (0, 1, 2, 3)
ARM_LABELS = {"direct": "instruction tuning only",
              "post_pretrained": "post-pretraining (tuning lr), then instruction tuning",
              "post_pretrained_10x_lr": "post-pretraining (10x lr), then instruction tuning"}
ARM_TICKS = {"direct": "direct IT", "post_pretrained": "post-pretrain + IT",
             "post_pretrained_10x_lr": "post-pretrain\n(10x lr) + IT"}
NUM_EXPERTS = 4


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kit_experts(kit: Path) -> dict[str, list[dict]]:
    """The kit config's expert entries (absolute sources) by domain, in kit order."""
    import yaml

    cfg = yaml.safe_load((kit / "mofe.yaml").read_text())
    out: dict[str, list[dict]] = {"medical": [], "general": []}
    for e in cfg["merge"]["experts"]:
        out[e["domain"]].append({**e, "source": str(kit / e["source"])})
    return out


def write_config(kit: Path, path: Path, **changes) -> Path:
    """The kit's mofe.yaml with absolute paths and `changes` (dotted keys) applied."""
    import yaml

    cfg = yaml.safe_load((kit / "mofe.yaml").read_text())
    cfg["merge"]["base_model"] = str(kit / "base")
    cfg["merge"]["experts"] = [{**e, "source": str(kit / e["source"])}
                               for e in cfg["merge"]["experts"]]
    cfg["data"]["train"] = [{**d, "path": str(kit / d["path"])} for d in cfg["data"]["train"]]
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(config: Path, logfile: Path) -> Path:
    """One `mofe train` run in this process (output quiet, kept in `logfile`)."""
    from rich.console import Console

    from training.config import load_config
    from training.train import run_training

    cfg = load_config(config)
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        out = run_training(cfg, console=Console(file=buf))
    logfile.write_text(buf.getvalue())
    return out


def medical_share(model_dir: Path, rows: list[dict]) -> float:
    """Share of routed (token, layer, top-k slot) decisions that go to medical experts on the
    questions' prompts: transformers' router logits, top-k per token as the model routes,
    summed as the server's `domain_shares` sums its counters."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mofe_serve.routing.serving import domain_shares

    manifest = json.loads((model_dir / "mofe.json").read_text())
    domains = [e["domain"] for e in sorted(manifest["experts"], key=lambda e: e["index"])]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    k = model.config.num_experts_per_tok
    counts = torch.zeros(model.config.num_hidden_layers, len(domains), dtype=torch.long)
    with torch.inference_mode():
        for r in rows:
            ids = tok(r["prompt"], return_tensors="pt").input_ids
            out = model(input_ids=ids, output_router_logits=True)
            for layer, logits in enumerate(out.router_logits):  # [tokens, experts]
                top = logits.topk(k, dim=-1).indices.flatten()
                counts[layer] += torch.bincount(top, minlength=len(domains))
    return domain_shares(counts.tolist(), domains).get("medical", 0.0)


def evaluate(model_dir: Path, rows: list[dict]) -> dict:
    from mofe_batch.option_text import accuracy

    return {"accuracy": accuracy(str(model_dir), rows),
            "medical_share": medical_share(model_dir, rows)}


def interval(values: list[float]) -> dict:
    """Mean, 95% t-interval half-width (n-1 dof), min and max."""
    t95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 8: 2.365, 10: 2.262}
    mean = statistics.fmean(values)
    half = (t95.get(len(values), 2.0) * statistics.stdev(values) / len(values) ** 0.5
            if len(values) > 1 else 0.0)
    return {"mean": mean, "ci95": half, "min": min(values), "max": max(values), "n": len(values)}


def run(args: argparse.Namespace) -> dict:
    from training.config import load_config
    from training.kit import build_kit
    from training.kit_data import load_facts, topic_text
    from training.merge import merge_experts

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    kit = work / "kit8"
    if not (kit / "mofe.yaml").is_file():
        log("building the 8-expert kit")
        build_kit(kit, experts=8, seed=0, overwrite=True)
    rows = [json.loads(line) for line in (kit / "data" / "knowledge.jsonl").open()]
    med_rows = [r for r in rows if r["domain"] == "medical" and r["split"] == "heldout"]
    experts = kit_experts(kit)
    results: dict = {"steps": args.steps, "seeds": args.seeds, "questions": len(med_rows),
                     "composition": {}, "post_pretraining": {}, "dense": {}}
    from mofe_batch.option_text import accuracy

    # what the dense models know on the same questions (the ceiling a merge can reach)
    for name in ["base", *[Path(e["source"]).name for e in experts["medical"]]]:
        path = kit / "base" if name == "base" else kit / "experts" / name
        results["dense"][name] = accuracy(str(path), med_rows)
    log(f"dense models: {results['dense']}")

    # 1. expert composition
    for n_med in MEDICAL_COUNTS:
        chosen = experts["medical"][:n_med] + experts["general"][:NUM_EXPERTS - n_med]
        merged = work / f"merged-med{n_med}"
        cfg_path = write_config(kit, work / f"med{n_med}.yaml", **{"merge.experts": chosen})
        if not merged.exists():
            merge_experts(load_config(cfg_path).merge, merged, 0)
        untuned = evaluate(merged, med_rows)
        log(f"composition {n_med}/4 medical, merged before tuning: {untuned}")
        runs = []
        for seed in range(args.seeds):
            out = work / f"med{n_med}-seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = write_config(kit, work / f"med{n_med}-seed{seed}.yaml", merge=None,
                               model=str(merged), output_dir=str(out), seed=seed,
                               **{"training.max_steps": args.steps,
                                  "training.eval_every": args.steps,
                                  "training.save_every": args.steps})
            train(cfg, work / f"med{n_med}-seed{seed}.log")
            runs.append(evaluate(out, med_rows))
            log(f"composition {n_med}/4 medical, seed {seed}: {runs[-1]}")
        results["composition"][n_med] = {
            "experts": [Path(e["source"]).name for e in chosen], "runs": runs,
            "untuned": untuned,
            "accuracy": interval([r["accuracy"] for r in runs]),
            "medical_share": interval([r["medical_share"] for r in runs])}

    # 2. post-pretraining, on the kit's own 2 medical + 2 general merge
    facts = load_facts()
    corpus = work / "general-corpus.jsonl"
    lines = [line for t, spec in facts.items() if spec["domain"] == "general"
             for line in topic_text(facts, t, random.Random(0))]
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    merged = work / "merged-med2"
    half = args.steps // 2
    import yaml

    tune_lr = yaml.safe_load((kit / "mofe.yaml").read_text())["training"]["learning_rate"]
    # post-pretraining at the tuning lr, and at 10x: the kit's few hundred sentences move
    # the trainable weights little at the tuning lr; the paper's large corpus moves them far
    arms = {"direct": None, "post_pretrained": 1.0, "post_pretrained_10x_lr": 10.0}
    for arm, lr_scale in arms.items():
        runs = []
        for seed in range(args.seeds):
            out = work / f"{arm}-seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            start = merged
            steps = args.steps
            if lr_scale is not None:
                ppt = work / f"ppt{lr_scale:g}-seed{seed}"
                shutil.rmtree(ppt, ignore_errors=True)
                cfg = write_config(kit, work / f"ppt{lr_scale:g}-seed{seed}.yaml", merge=None,
                                   model=str(merged), output_dir=str(ppt), seed=seed,
                                   **{"data.train": [{"path": str(corpus), "format": "text"}],
                                      "training.learning_rate": tune_lr * lr_scale,
                                      "training.max_steps": half,
                                      "training.eval_every": half,
                                      "training.save_every": half})
                train(cfg, work / f"ppt{lr_scale:g}-seed{seed}.log")
                start, steps = ppt, args.steps - half
            cfg = write_config(kit, work / f"{arm}-seed{seed}.yaml", merge=None,
                               model=str(start), output_dir=str(out), seed=seed,
                               **{"training.max_steps": steps, "training.eval_every": steps,
                                  "training.save_every": steps})
            train(cfg, work / f"{arm}-seed{seed}.log")
            runs.append(evaluate(out, med_rows))
            log(f"{arm}, seed {seed}: {runs[-1]}")
        results["post_pretraining"][arm] = {
            "runs": runs, "accuracy": interval([r["accuracy"] for r in runs]),
            "medical_share": interval([r["medical_share"] for r in runs])}
    return results


def fmt(iv: dict) -> str:
    return f"{iv['mean']:.3f} ± {iv['ci95']:.3f} ({iv['min']:.3f}–{iv['max']:.3f})"


def markdown(res: dict) -> str:
    lines = [f"Medical multiple-choice accuracy on {res['questions']} held-out questions "
             f"(chance 0.25); mean ± 95% CI (min–max) over {res['seeds']} seeds, "
             f"{res['steps']} tuning steps.", "",
             "| medical experts of 4 | experts | before tuning | after tuning | "
             "medical share of routing |",
             "|---|---|---|---|---|"]
    for n, r in res["composition"].items():
        lines.append(f"| {n} | {', '.join(r['experts'])} | {r['untuned']['accuracy']:.3f} | "
                     f"{fmt(r['accuracy'])} | {fmt(r['medical_share'])} |")
    lines += ["", "| training | accuracy | medical share of routing |", "|---|---|---|"]
    for arm, r in res["post_pretraining"].items():
        label = ARM_LABELS[arm]
        lines.append(f"| {label} | {fmt(r['accuracy'])} | {fmt(r['medical_share'])} |")
    lines += ["", "Dense models on the same questions (no merge, no tuning):", "",
              "| model | accuracy |", "|---|---|"]
    lines += [f"| {name} | {acc:.3f} |" for name, acc in res["dense"].items()]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    ns = [int(n) for n in res["composition"]]
    for key, label, color in (("accuracy", "accuracy", "C0"),
                              ("medical_share", "medical routing share", "C1")):
        ivs = [res["composition"][n][key] for n in res["composition"]]
        a.errorbar(ns, [i["mean"] for i in ivs], yerr=[i["ci95"] for i in ivs], marker="o",
                   capsize=4, label=label, color=color)
    a.axhline(0.25, ls=":", color="grey", label="chance")
    a.set_xticks(ns)
    a.set_xlabel("medical experts of 4")
    a.set_title("Expert composition")
    a.legend(fontsize=8)
    arms = list(res["post_pretraining"])
    ivs = [res["post_pretraining"][k]["accuracy"] for k in arms]
    b.bar(range(len(arms)), [i["mean"] for i in ivs], yerr=[i["ci95"] for i in ivs], capsize=6,
          color=["C0", "C3", "C1"][:len(arms)])
    b.axhline(0.25, ls=":", color="grey")
    b.set_xticks(range(len(arms)), [ARM_TICKS[a] for a in arms], fontsize=8)
    b.set_ylabel("medical MCQ accuracy")
    b.set_title("Post-pretraining (same total steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--work", default="/tmp/mofe-paper-ablations")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.seeds < 2:
        p.error("--seeds must be at least 2 for an interval")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    res = run(args)
    res["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_ablations.json").write_text(json.dumps(res, indent=2))
    (out / "paper_ablations.md").write_text(markdown(res))
    plot(res, out / "paper_ablations.png")
    print(markdown(res))
    log(f"done in {res['wall_s']} s; results in {out}/paper_ablations.*")


if __name__ == "__main__":
    main()
