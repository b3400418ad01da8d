"""OUTPUT.report.json / .report.md (/ .report.png): accuracy with Wilson CIs, routing shares.

Built from the whole output file (rows from earlier, resumed runs included) plus this run's
facts (skipped rows, throughput, cop convention).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from model_registry.manifest import atomic_write_text

from .output import read_rows

Z95 = 1.959963984540054


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (0, 0 when n == 0)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _acc(correct: int, n: int) -> dict:
    lo, hi = wilson(correct, n)
    return {"n": n, "correct": correct, "acc": correct / n if n else None,
            "ci95": [lo, hi]}


def summarize(output: Path, run: dict) -> dict:
    groups: dict[str, dict] = defaultdict(lambda: {"n": 0, "correct": 0, "correct_norm": 0,
                                                   "unlabeled": 0, "routed": defaultdict(float)})
    seen: set[str] = set()
    duplicates = 0
    for row in read_rows(output):
        # An id counts once (its first line) even if the file holds it twice: rows appended
        # by hand, by two runs that raced before the lock existed, or by any other accident.
        rid = str(row.get("id"))
        if rid in seen:
            duplicates += 1
            continue
        seen.add(rid)
        for key in ("__all__", row.get("subject") or "unknown"):
            g = groups[key]
            if row.get("correct") is None:
                g["unlabeled"] += 1
            else:
                g["n"] += 1
                g["correct"] += int(row["correct"])
                g["correct_norm"] += int(row["correct_norm"])
            for domain, n in (row.get("routed_tokens") or {}).items():
                g["routed"][domain] += n

    def block(g: dict) -> dict:
        routed = dict(g["routed"])
        total = sum(routed.values())
        return {**_acc(g["correct"], g["n"]),
                "acc_norm": _acc(g["correct_norm"], g["n"]),
                "unlabeled": g["unlabeled"],
                "expert_share": {d: v / total for d, v in routed.items()} if total else None,
                "routed_tokens": routed or None}

    overall = block(groups.pop("__all__")) if "__all__" in groups else block(
        {"n": 0, "correct": 0, "correct_norm": 0, "unlabeled": 0, "routed": {}})
    return {**run, "overall": overall, "duplicate_rows_ignored": duplicates,
            "subjects": {s: block(g) for s, g in sorted(groups.items())}}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def to_markdown(report: dict) -> str:
    o = report["overall"]
    lines = [f"# Batch QA report: {report['task']} on {report['model']}", "",
             f"- input: `{report['input']}` ({report['rows_seen']} rows read)",
             f"- scored this run: {report['scored_this_run']}, resumed from earlier runs: "
             f"{report['resumed']}, backend: {report['backend']}, dtype: {report['dtype']}",
             f"- prompts: {report['shots']}-shot, chat template: {report['chat_template']}",
             f"- accuracy: {_pct(o['acc'])} (95% CI {_pct(o['ci95'][0])}-{_pct(o['ci95'][1])},"
             f" n={o['n']}); acc_norm {_pct(o['acc_norm']['acc'])}",
             f"- throughput: {report['throughput_qps']:.2f} questions/s "
             f"({report['scoring_seconds']:.1f} s after load, {report['engine_seconds']:.1f} s of it in "
             f"the engine; {report['load_seconds']:.1f} s model load)"]
    if report.get("threads"):
        t = report["threads"]
        lines.append(f"- CPU: {t['threads']} thread(s) on core(s) "
                     f"{', '.join(map(str, t['cores']))}"
                     + (f" (WARNING: shared with other vLLM engines on "
                        f"{', '.join(map(str, t['shared_cores']))})" if t["shared_cores"] else ""))
    if report.get("routing_counts"):
        lines.append(f"- routing counts {report['routing_counts']} "
                     f"({report.get('computed_tokens_this_run')} of "
                     f"{report.get('prompt_tokens_this_run')} prompt tokens computed this run)")
    if report.get("interrupted"):
        lines.append("- **interrupted** (Ctrl-C): rerun the same command to finish")
    if report.get("duplicate_rows_ignored"):
        lines.append(f"- {report['duplicate_rows_ignored']} duplicate result lines ignored "
                     "(each id counted once, first line wins)")
    if report.get("truncated_prompts"):
        lines.append(f"- {report['truncated_prompts']} prompts left-truncated to the context")
    if report.get("cop_base") is not None:
        lines.append(f"- MedMCQA `cop` convention: {report['cop_base']}-based "
                     f"({report['cop_base_reason']})")
    lines.append(f"- routing granularity: {report['routing_granularity']}")
    lines += ["", "## Accuracy by subject", "",
              "| subject | n | acc | 95% CI | acc_norm | unlabeled |", "|---|---|---|---|---|---|"]
    for s, b in report["subjects"].items():
        lines.append(f"| {s} | {b['n']} | {_pct(b['acc'])} | {_pct(b['ci95'][0])}-"
                     f"{_pct(b['ci95'][1])} | {_pct(b['acc_norm']['acc'])} | {b['unlabeled']} |")
    domains = sorted({d for b in [o, *report["subjects"].values()]
                      for d in (b["expert_share"] or {})})
    if domains:
        lines += ["", "## Expert share by subject (routed token slots, all layers)", "",
                  "| subject | " + " | ".join(domains) + " |",
                  "|---|" + "---|" * len(domains)]
        for s, b in [*report["subjects"].items(), ("**all**", o)]:
            share = b["expert_share"] or {}
            lines.append(f"| {s} | " + " | ".join(_pct(share.get(d)) for d in domains) + " |")
    skipped = report["skipped"]
    lines += ["", f"## Skipped rows: {skipped['count']}", ""]
    for reason, n in sorted(skipped["by_reason"].items()):
        lines.append(f"- {n} x {reason}")
    for item in skipped["examples"]:
        lines.append(f"  - {item['where']}: {item['reason']}")
    return "\n".join(lines) + "\n"


def write_reports(output: Path, report: dict, png: bool = False) -> list[Path]:
    base = str(output)
    paths = [atomic_write_text(Path(base + ".report.json"), json.dumps(report, indent=2)),
             atomic_write_text(Path(base + ".report.md"), to_markdown(report))]
    if png:
        from .plot import plot_report

        paths.append(plot_report(report, Path(base + ".report.png")))
    return paths
