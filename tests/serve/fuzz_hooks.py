"""Schemathesis hooks for tests/serve/test_server_robustness.py (loaded by the CLI through
SCHEMATHESIS_HOOKS=tests.serve.fuzz_hooks).

* `no_server_error`: no 5xx, except 501 `NotImplementedError`, vLLM's answer to a
  well-formed request for an API this model does not support (`/v1/systemone`, the
  structured-decision API, is registered for every generate model). Replaces
  schemathesis' `not_a_server_error` for that one exception.
* `openai_error_shape`: every 4xx/5xx body is OpenAI's `{"error": {"message", "type",
  "param", "code"}}`; vLLM's Anthropic-compatible routes (`/v1/messages*`) may instead
  answer in Anthropic's shape `{"type": "error", "error": {"type", "message"}}`, which is
  what Anthropic clients parse.
* `map_body` caps the generation size knobs (n, best_of, max_tokens, ...) of generated
  bodies: a valid request for 500 tokens x 100 samples is legal and only costs CPU time;
  the fuzz is after malformed input, and the caps keep the run bounded. Types are never
  changed, so a wrongly typed value still reaches the server as generated.
"""

from __future__ import annotations

import schemathesis

ERROR_FIELDS = {"message", "type", "param", "code"}
_CAPS = {"n": 2, "best_of": 2, "max_tokens": 8, "max_completion_tokens": 8,
         "max_output_tokens": 8, "min_tokens": 4}


ANTHROPIC_FIELDS = {"type", "message"}


def _error(response, anthropic: bool = False) -> dict:
    try:
        body = response.json()
        error = body["error"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AssertionError(f"error body is not OpenAI-shaped: {response.text[:200]!r}") from exc
    if isinstance(error, dict) and set(error) == ERROR_FIELDS:
        return error
    if (anthropic and body.get("type") == "error" and isinstance(error, dict)
            and set(error) == ANTHROPIC_FIELDS):
        return error
    raise AssertionError(f"error body is not OpenAI-shaped: {response.text[:200]!r}")


@schemathesis.check
def no_server_error(ctx, response, case):
    if response.status_code < 500:
        return None
    if response.status_code == 501 and _error(response)["type"] == "NotImplementedError":
        return None
    raise AssertionError(f"{response.status_code} for {case.method} {case.path}: "
                         f"{response.text[:300]!r}")


@schemathesis.check
def openai_error_shape(ctx, response, case):
    if response.status_code >= 400:
        _error(response, anthropic=case.path.startswith("/v1/messages"))
    return None


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        for key, cap in _CAPS.items():
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                body[key] = cap
    return body
