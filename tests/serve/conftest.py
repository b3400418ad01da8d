"""One `mofe serve` for the whole session: tiny Mixtral (4 experts, top-2), eager, fp32.

fp32 so routing can be compared exactly with transformers; prefix caching off so every
prompt token is computed (and counted) in each request.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .server_proc import MofeServer
from .tiny_mixtral import build_tiny_mixtral

API_KEY = "test-key-123"
SERVED_NAME = "tiny-mofe@1"
ALIAS = "tiny-mofe@prod"
ENGINE_ARGS = ["--dtype", "float32", "--no-enable-prefix-caching", "--max-model-len", "512",
               "--routing-poll-interval", "0.5"]


@pytest.fixture(scope="session")
def tiny_mixtral(tmp_path_factory) -> Path:
    return build_tiny_mixtral(tmp_path_factory.mktemp("serve-model") / "tiny-mofe")


@pytest.fixture(scope="session")
def mofe_server(tiny_mixtral, tmp_path_factory):
    """A running server: .base_url, .api_key; served as tiny-mofe@1 and tiny-mofe@prod."""
    log_dir = tmp_path_factory.mktemp("serve-logs")
    server = MofeServer(
        tiny_mixtral, log_dir / "mofe-serve.log", api_key=API_KEY,
        extra=["--enforce-eager", "--served-model-name", SERVED_NAME,
               "--served-model-name", ALIAS, *ENGINE_ARGS],
        env={"MOFE_CACHE_DIR": str(log_dir / "cache")})
    server.wait_ready()
    yield server
    leftovers = server.stop()
    assert not leftovers, f"unclean shutdown after SIGTERM: {leftovers}"


@pytest.fixture(scope="session")
def openai_client(mofe_server):
    import openai

    return openai.OpenAI(base_url=f"{mofe_server.base_url}/v1", api_key=mofe_server.api_key,
                         max_retries=0, timeout=120)
