"""The suite's one shared `mofe serve`: its model, names, key and engine flags.

Started once per session by the `mofe_server` fixture (tests/conftest.py) and used by every
area that only needs a running server (serve, batch --endpoint). fp32 so routing can be
compared exactly with transformers and scores with the offline engine; prefix caching off so
every prompt token is computed (and counted) in each request.
"""

from __future__ import annotations

API_KEY = "test-key-123"
SERVED_NAME = "tiny-mofe@1"
ALIAS = "tiny-mofe@prod"
ENGINE_ARGS = ["--dtype", "float32", "--no-enable-prefix-caching", "--max-model-len", "512",
               "--routing-poll-interval", "0.5"]
