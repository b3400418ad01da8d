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

from mofe_serve.server_process import force_kill_lines, shm_left_behind, shm_mapped_by


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


@pytest.fixture(scope="session")
def vllm_scorer(tiny_mofe_per_expert, tmp_path_factory):
    """One in-process vLLM engine (fp32, eager) with the routing-counter plugin, on the
    per-expert copy of the session model (batch tests do not depend on the layout).

    Block size 32, the smallest vLLM's CPU attention accepts ("MultipleOf(32)"; the CPU
    default is 128, GPU's 16), so that prompts sharing a prefix span whole KV blocks, as
    shared few-shot or system prefixes do on GPU.
    """
    from mofe_batch.backend_vllm import VllmScorer
    from mofe_batch.routing import load_domains
    from mofe_serve.engine import ENGINE_EXIT_GRACE_S

    ours = _Lines()
    logging.getLogger("mofe_serve").addHandler(ours)
    running = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. test servers
    scorer = VllmScorer(str(tiny_mofe_per_expert), dtype="float32", block_size=32)
    logging.getLogger("mofe_serve").removeHandler(ours)
    # No VLLM_CPU_KVCACHE_SPACE in the suite: the scorer chose and logged a KV-cache size.
    assert any("for the KV cache on CPU" in line for line in ours.lines), ours.lines
    # Its engine core and worker; multiprocessing's resource tracker lives as long as pytest.
    engine_procs = [p for p in psutil.Process().children(recursive=True)
                    if p.pid not in running and "resource_tracker" not in " ".join(p.cmdline())]
    scorer.domains = load_domains(tiny_mofe_per_expert, 4)
    # Added after the engine exists: vLLM's logging set-up replaces its logger's handlers.
    vllm_lines = _Lines()
    logging.getLogger("vllm").addHandler(vllm_lines)
    yield scorer
    # Only what its own processes map: entries other tests leak are not this engine's.
    shm_used = shm_mapped_by([p.pid for p in engine_procs])
    assert shm_used, "the engine maps no /dev/shm entry: the leak check would see nothing"
    scorer.close()
    # Closed in order: engine core and worker exited on their own, nothing left in /dev/shm.
    logging.getLogger("vllm").removeHandler(vllm_lines)
    # vLLM's own shutdown line, with the grace period engine.close_llm gave the processes.
    assert any(f"MPClient: start timeout={ENGINE_EXIT_GRACE_S}s" in line
               for line in vllm_lines.lines), vllm_lines.lines
    forced = force_kill_lines("\n".join(vllm_lines.lines))
    _, alive = psutil.wait_procs(engine_procs, timeout=10)
    assert not alive and not forced, f"engine not closed cleanly: {alive} {forced}"
    assert not shm_left_behind(shm_used)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
