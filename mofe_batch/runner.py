"""The batch job: stream rows, score them in subject-grouped chunks, write, report.

Chunks hold questions of one subject (per-subject buffers, the fullest flushed when too
much is buffered), so a chunk's routing delta belongs to one subject exactly; a row's
expert shares are its chunk's, apportioned by prompt tokens (`--routing question` scores
one question per engine call for exact per-row shares, at a throughput cost).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from mofe_serve.engine import plan_cpu_threads

from .backends import make_scorer, resolve_model
from .config import BatchConfig, pre_pass
from .output import ResultWriter, repair_and_read_ids
from .prompts import PromptBuilder
from .provenance import OutputLock, check_or_record, run_identity
from .questions import Skips, iter_questions, load_dev
from .readers import position_label
from .report import summarize, write_reports
from .routing import by_domain, delta
from .rows import result_row
from .scoring import build_items


class _Stopped(Exception):
    """The engine call failed after Ctrl-C: stop as if the chunk had not started."""


def run_batch(cfg: BatchConfig, scorer=None, log=print) -> dict:
    started = time.time()
    if cfg.threads is not None and scorer is None and not cfg.endpoint:
        # refuse an impossible --threads before anything is read or written
        plan_cpu_threads(sorted(os.sched_getaffinity(0)), {}, cfg.threads)
    pre = pre_pass(cfg.input, cfg.task, cfg.cop_base)
    if pre.cop_reason and "WARNING" in pre.cop_reason:
        log(f"warning: MedMCQA cop convention: {pre.cop_reason}")
    label = position_label(cfg.input)
    if cfg.strict:  # validate everything before loading a model or writing a line
        for _ in iter_questions(cfg, pre.cop_base, Skips(cfg.input, label), strict=True):
            pass
    dev = load_dev(cfg, pre.cop_base)
    # One writer per output: the lock is taken before the output is repaired or read.
    with OutputLock(cfg.output):
        return _run_locked(cfg, scorer, log, pre, label, dev, started)


def _run_locked(cfg: BatchConfig, scorer, log, pre, label: str, dev, started: float) -> dict:
    done = repair_and_read_ids(cfg.output)
    own_scorer = scorer is None
    if own_scorer:  # cheap: resolving a REF loads and converts nothing
        engine_path, display, source = resolve_model(cfg.model)
    else:  # a caller-provided scorer (tests, notebooks): cfg.model names it, maybe a path
        path = Path(cfg.model)
        source = path.resolve() if (path / "config.json").is_file() else None
        display = path.name if source else cfg.model
    # Refuse a resume with other settings before any model is loaded.
    identity = run_identity(cfg, display, source, scorer.name if scorer else cfg.backend,
                            pre.cop_base)
    check_or_record(cfg.output, bool(done), identity)
    t0 = time.time()
    if own_scorer:  # a caller-provided scorer (tests, notebooks) already holds its model
        scorer = make_scorer(cfg, engine_path, source)
    load_seconds = time.time() - t0
    loaded_at = time.time()
    chat = scorer.tokenizer if cfg.chat_template else None
    prompts = PromptBuilder(cfg.task, cfg.template, cfg.shots, dev, cfg.seed, chat)

    stop = {"flag": False}
    previous = None

    def on_sigint(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        log("interrupt: finishing the current chunk, then stopping (Ctrl-C again to abort)")

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:
        previous = None  # not the main thread: no handler

    skips = Skips(cfg.input, label)
    writer = ResultWriter(cfg.output)
    counts = {"scored": 0, "resumed": 0, "truncated": 0, "seconds": 0.0, "prompt_tokens": 0,
              "computed_tokens": 0}
    total = min(pre.records, cfg.limit) if cfg.limit else pre.records
    bar = _progress(total, cfg.progress)
    chunk_size = 1 if cfg.routing == "question" else cfg.chunk_size
    buffers: dict[str, list] = {}

    def flush(subject: str) -> None:
        pending = buffers.pop(subject, [])
        built = build_items(scorer.tokenizer, [(ctx, conts) for _, ctx, conts in pending],
                            scorer.max_len)
        batch = []
        for (q, _, _), item in zip(pending, built, strict=True):
            if isinstance(item, ValueError):
                skips.add(q.position, str(item), cfg.strict)
                continue
            counts["truncated"] += item.truncated
            batch.append((q, item))
        if not batch:
            return
        t = time.time()
        try:
            before = scorer.routing_snapshot()
            lls = scorer.score([item for _, item in batch])
            after = scorer.routing_snapshot()
        except Exception:
            # A terminal's Ctrl-C also reaches vLLM's engine process, which then dies under
            # the call in flight: that chunk is simply not written (the rerun scores it).
            if stop["flag"]:
                raise _Stopped from None
            raise
        counts["seconds"] += time.time() - t
        routed = (by_domain(delta(after, before), scorer.domains)
                  if before is not None and scorer.domains else None)
        # A chunk's routed slots go to its rows by the tokens each made the engine compute
        # (a shared prefix is counted where it was computed, once).
        weights = [_computed(item) for _, item in batch]
        per_item = getattr(scorer, "item_routing", None)  # exact per question (--endpoint)
        if per_item is not None:
            rows = [result_row(q, item, ll, own, 1.0) for (q, item), ll, own
                    in zip(batch, lls, per_item, strict=True)]
        else:
            total = sum(weights) or 1
            rows = [result_row(q, item, ll, routed, w / total)
                    for (q, item), ll, w in zip(batch, lls, weights, strict=True)]
        writer.write_chunk(rows)
        counts["scored"] += len(rows)
        counts["prompt_tokens"] += sum(item.num_tokens for _, item in batch)
        counts["computed_tokens"] += sum(weights)
        bar.update(len(rows))

    try:
        for q in iter_questions(cfg, pre.cop_base, skips, cfg.strict):
            if q.id in done:
                counts["resumed"] += 1
                bar.update(1)
                continue
            # tokenized per chunk at flush time, in one batched call
            buffers.setdefault(q.subject, []).append((q, prompts.context(q),
                                                      prompts.continuations(q)))
            if len(buffers[q.subject]) >= chunk_size:
                flush(q.subject)
            elif sum(len(b) for b in buffers.values()) >= 4 * chunk_size:
                flush(max(buffers, key=lambda s: len(buffers[s])))
            if stop["flag"]:
                break
        if not stop["flag"]:
            for subject in list(buffers):
                flush(subject)
                if stop["flag"]:
                    break
    except _Stopped:
        pass
    finally:
        finished_at = time.time()
        writer.close()
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if own_scorer:
            try:
                scorer.close()
            except Exception as exc:  # an engine already gone after Ctrl-C
                log(f"warning: closing the engine: {exc}")

    run = {
        "task": cfg.task, "model": display, "input": str(cfg.input), "output": str(cfg.output),
        "backend": scorer.name, "dtype": cfg.dtype, "shots": cfg.shots, "seed": cfg.seed,
        "chat_template": cfg.chat_template, "rows_seen": pre.records,
        "scored_this_run": counts["scored"], "resumed": counts["resumed"],
        "truncated_prompts": counts["truncated"], "interrupted": stop["flag"],
        "cop_base": pre.cop_base, "cop_base_reason": pre.cop_reason,
        "skipped": skips.as_dict(), "load_seconds": load_seconds,
        # everything after the model is loaded: reading, prompts, tokenizing, engine, writing
        "scoring_seconds": finished_at - loaded_at, "engine_seconds": counts["seconds"],
        "wall_seconds": time.time() - started,
        "routing_granularity": _granularity(cfg, scorer),
        # vLLM: on; routing then counts computed tokens (cached prompt blocks skip the router)
        "prefix_caching": getattr(scorer, "prefix_caching", None),
        "routing_counts": _counted(scorer),
        "prompt_tokens_this_run": counts["prompt_tokens"],
        "computed_tokens_this_run": counts["computed_tokens"],
        "threads": _threads(scorer),
        "provenance": identity,
    }
    run["throughput_qps"] = counts["scored"] / run["scoring_seconds"] if counts["scored"] else 0.0
    report = summarize(cfg.output, run)
    report["report_files"] = [str(p) for p in write_reports(cfg.output, report, cfg.report_png)]
    return report


def _computed(item) -> int:
    return item.num_tokens if item.computed_tokens is None else item.computed_tokens


def _counted(scorer) -> str | None:
    if not scorer.domains:
        return None
    if getattr(scorer, "prefix_caching", False):
        return ("computed tokens: per layer, routed slots = top_k x the prompt tokens the "
                "engine computed; a prefix read from vLLM's prefix cache is counted once, "
                "where it was first computed")
    return "scored tokens: per layer, routed slots = top_k x every scored prompt token"


def _threads(scorer) -> dict | None:
    plan = getattr(scorer, "cpu_plan", None)
    if plan is None:
        return None
    return {"threads": plan.threads, "cores": list(plan.cpus),
            "other_engines": {str(pid): list(c) for pid, c in plan.others.items()},
            "shared_cores": list(plan.shared)}


def _granularity(cfg: BatchConfig, scorer) -> str:
    own = getattr(scorer, "routing_granularity", None)
    if own:
        return own
    if not scorer.domains:
        return "none (the model has no MoFE routing counters, or scored via --endpoint)"
    if cfg.routing == "question":
        return "per question (one engine call per question)"
    return (f"per chunk of up to {cfg.chunk_size} questions of one subject; a row's shares "
            "are its chunk's (per-subject totals are exact)")


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="q", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
