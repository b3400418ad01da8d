"""Fixtures for the batch QA tests: a tiny MoFE Mixtral from the kit, one vLLM engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .tiny_moe import build_tiny_moe


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """File hashes `mofe batch` caches (provenance) go to a temp dir, not the user's cache;
    subprocesses inherit it."""
    import os

    if "MOFE_CACHE_DIR" not in os.environ:
        os.environ["MOFE_CACHE_DIR"] = str(tmp_path_factory.mktemp("batch-cache"))


@pytest.fixture(scope="session")
def moe_model(kit, tmp_path_factory) -> Path:
    return build_tiny_moe(kit, tmp_path_factory.mktemp("batch-model") / "tiny-moe")


@pytest.fixture(scope="session")
def medmcqa_rows(kit) -> list[dict]:
    return [json.loads(line) for line in (kit / "data" / "medmcqa.jsonl").open()]


@pytest.fixture(scope="session")
def vllm_scorer(moe_model, tmp_path_factory):
    """One in-process vLLM engine (fp32, eager) with the routing-counter plugin.

    Block size 32, the smallest vLLM's CPU attention accepts ("MultipleOf(32)"; the CPU
    default is 128, GPU's 16), so that prompts sharing a prefix span whole KV blocks, as
    shared few-shot or system prefixes do on GPU.
    """
    from mofe_serve.batch.backend_vllm import VllmScorer
    from mofe_serve.batch.routing import load_domains

    scorer = VllmScorer(str(moe_model), dtype="float32",
                        block_size=32)  # either layout loads as is
    scorer.domains = load_domains(moe_model, 4)
    yield scorer
    scorer.close()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
