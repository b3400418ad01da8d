"""Session-wide fixtures: the tiny offline model kit is built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No VLLM_CPU_KVCACHE_SPACE here: engines started by the suite size their KV cache the way
# they do for a user (mofe_serve.engine), so a start-up that fails for users fails here.
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> Path:
    """tokenizer/, base/, experts/<name>/ (4 experts: 2 medical, 2 general), data/, mofe.yaml."""
    from training.kit import build_kit

    return build_kit(tmp_path_factory.mktemp("kit") / "kit", experts=4, seed=0, overwrite=True)
