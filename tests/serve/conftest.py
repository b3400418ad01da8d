"""Serving tests use the session's shared server and model (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def openai_client(mofe_server):
    import openai

    return openai.OpenAI(base_url=f"{mofe_server.base_url}/v1", api_key=mofe_server.api_key,
                         max_retries=0, timeout=120)
