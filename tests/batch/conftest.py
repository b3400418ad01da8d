"""Fixtures for the batch QA tests: one in-process vLLM engine on the session's test model
(`tiny_mofe`: the kit's trained experts merged, tests/conftest.py), loaded from a per-expert
copy of it, so that the session server (fused) and this engine (per-expert) together cover
both layouts (tests/batch/test_layouts_agree.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import psutil
import pytest

from mofe_serve.server_process import shm_mapped_by


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """File hashes `mofe batch` caches (provenance) go to a temp dir, not the user's cache;
    subprocesses inherit it."""
    import os

    if "MOFE_CACHE_DIR" not in os.environ:
        os.environ["MOFE_CACHE_DIR"] = str(tmp_path_factory.mktemp("batch-cache"))


@pytest.fixture(scope="session")
def medmcqa_rows(kit) -> list[dict]:
    return [json.loads(line) for line in (kit / "data" / "medmcqa.jsonl").open()]


@pytest.fixture(scope="session")
def tiny_mofe_per_expert(tiny_mofe, tmp_path_factory) -> Path:
    """`tiny_mofe` (fused) converted to the per-expert layout: same tensors, tokenizer and
    mofe.json."""
    from model_registry.checkpoint import convert_checkpoint, layout_of

    out = convert_checkpoint(tiny_mofe, tmp_path_factory.mktemp("per-expert") / "tiny-mofe")
    assert (layout_of(tiny_mofe), layout_of(out)) == ("fused", "per_expert")
    return out


# Package scope: while the engine lives, this process's main thread is pinned to the plan's
# cores, and every subprocess it starts (test servers, kit builds) inherits that pin. Alive
# for the whole session, it put the rest of the suite on one core.
@pytest.fixture(scope="package")
def vllm_scorer(tiny_mofe_per_expert, tmp_path_factory):
    """One vLLM engine (fp32, eager) with the routing-counter plugin, on the per-expert copy
    of the session model (batch tests do not depend on the layout), run as `mofe batch`
    runs it: in this process, on the cores `plan_offline_cpus` chose, prefix caching on.

    Block size 32, the smallest vLLM's CPU attention accepts ("MultipleOf(32)"; the CPU
    default is 128, GPU's 16), so that prompts sharing a prefix span whole KV blocks, as
    shared few-shot or system prefixes do on GPU.
    """
    import os

    from mofe_batch.backend_vllm import VllmScorer
    from mofe_batch.routing import load_domains

    ours = _Lines()
    logging.getLogger("mofe_serve").addHandler(ours)
    running = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. test servers
    affinity = os.sched_getaffinity(0)
    shm_before = shm_mapped_by([os.getpid()])
    scorer = VllmScorer(str(tiny_mofe_per_expert), dtype="float32", block_size=32)
    logging.getLogger("mofe_serve").removeHandler(ours)
    # No VLLM_CPU_KVCACHE_SPACE in the suite: the scorer chose and logged a KV-cache size,
    # and logged the cores it computes on.
    assert any("for the KV cache on CPU" in line for line in ours.lines), ours.lines
    assert any("offline engine in this process" in line for line in ours.lines), ours.lines
    # In-process: no engine-core or worker process was started (multiprocessing's resource
    # tracker may start and lives as long as pytest).
    # Processes of a test server that was already running (its engine may still be
    # spawning) are not this engine's.
    started = [p for p in psutil.Process().children(recursive=True)
               if p.pid not in running and not running & {a.pid for a in p.parents()}
               and "resource_tracker" not in " ".join(p.cmdline())]
    assert not started, started
    scorer.domains = load_domains(tiny_mofe_per_expert, 4)
    yield scorer
    scorer.close()
    # Closed: the test process's threads may use every core they could before, and the
    # engine left no /dev/shm entry mapped.
    assert os.sched_getaffinity(0) == affinity
    assert not shm_mapped_by([os.getpid()]) - shm_before


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
