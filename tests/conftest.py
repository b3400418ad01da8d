"""Session-wide fixtures: the tiny offline model kit, the one test model built from it, and
the one shared `mofe serve` (tests/session_server.py), each built or started once."""

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

# The cores this test process may use. An in-process engine (`mofe batch`, tests/batch's
# `vllm_scorer`) pins the main thread to its planned cores while it lives; every server or
# CLI a later test starts would inherit that pin and run on fewer cores than a user's.
SESSION_CPUS = os.sched_getaffinity(0)
BATCH_TESTS = Path(__file__).parent / "batch"  # they run next to that engine


def pytest_runtest_setup(item):
    if item.path.is_relative_to(BATCH_TESTS):
        return
    pinned = os.sched_getaffinity(0)
    if pinned != SESSION_CPUS:
        raise RuntimeError(f"{item.nodeid} would start with this process pinned to cores "
                           f"{sorted(pinned)} of {sorted(SESSION_CPUS)}: an in-process engine "
                           "from an earlier test is still alive (see tests/batch/conftest.py)")


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> Path:
    """tokenizer/, base/, experts/<name>/ (4 experts: 2 medical, 2 general), data/, mofe.yaml."""
    from training.kit import build_kit

    return build_kit(tmp_path_factory.mktemp("kit") / "kit", experts=4, seed=0, overwrite=True)


@pytest.fixture(scope="session")
def tiny_mofe(kit, tmp_path_factory) -> Path:
    """The kit's four experts merged by mergekit (random router), fused layout, fp32, with a
    mofe.json naming the domains (training/test_models.py)."""
    from training.test_models import build_kit_moe

    return build_kit_moe(kit, tmp_path_factory.mktemp("test-model") / "tiny-mofe")


@pytest.fixture(scope="session")
def mofe_server(tiny_mofe, tmp_path_factory):
    """The shared running server: .base_url, .api_key; serves tiny_mofe as tiny-mofe@1 and
    tiny-mofe@prod, eager."""
    from session_server import ALIAS, API_KEY, ENGINE_ARGS, SERVED_NAME

    from mofe_serve.server_process import MofeServer

    log_dir = tmp_path_factory.mktemp("serve-logs")
    server = MofeServer(
        tiny_mofe, log_dir / "mofe-serve.log", api_key=API_KEY,
        extra=["--enforce-eager", "--served-model-name", SERVED_NAME,
               "--served-model-name", ALIAS, *ENGINE_ARGS],
        env={"MOFE_CACHE_DIR": str(log_dir / "cache")})
    server.wait_ready()
    yield server
    leftovers = server.stop()
    assert not leftovers, f"unclean shutdown after SIGTERM: {leftovers}"
