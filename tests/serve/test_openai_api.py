"""vLLM's OpenAI API through `mofe serve`, driven with the official openai client."""

from __future__ import annotations

import httpx
import openai
import pytest
from session_server import ALIAS, API_KEY, SERVED_NAME

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_models_lists_version_and_alias(openai_client, tiny_mofe):
    models = openai_client.models.list().data
    assert [m.id for m in models] == [SERVED_NAME, ALIAS]
    # The fixture checkpoint is in the fused layout: vLLM loads it where it is (no cache).
    assert models[0].root == str(tiny_mofe.resolve())


def test_chat_completion(openai_client):
    r = openai_client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "What treats a fever?"}],
        max_tokens=8, temperature=0)
    assert r.model == SERVED_NAME
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5


def test_alias_name_is_accepted(openai_client):
    r = openai_client.completions.create(model=ALIAS, prompt="The heart", max_tokens=3)
    assert len(r.choices) == 1


def test_completion_seed_is_reproducible_and_n(openai_client):
    kwargs = dict(model=SERVED_NAME, prompt="The patient was given", max_tokens=6,
                  temperature=1.0, seed=1234, n=3, extra_body={"ignore_eos": True})
    a = openai_client.completions.create(**kwargs)
    b = openai_client.completions.create(**kwargs)
    assert len(a.choices) == 3 and sorted(c.index for c in a.choices) == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.usage.completion_tokens == 18


def test_streaming_reports_usage_in_last_chunk(openai_client):
    stream = openai_client.completions.create(
        model=SERVED_NAME, prompt="Aspirin is", max_tokens=5, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert len(text) > 0


def test_chat_streaming(openai_client):
    stream = openai_client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens >= 1


def test_stop_string_ends_completion(openai_client):
    full = openai_client.completions.create(model=SERVED_NAME, prompt="The dose", max_tokens=12,
                                            temperature=0, extra_body={"ignore_eos": True})
    text = full.choices[0].text
    stop = text[len(text) // 2:][:2]
    assert stop.strip(), f"need a non-blank stop string from {text!r}"
    cut = openai_client.completions.create(model=SERVED_NAME, prompt="The dose", max_tokens=12,
                                           temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.index(stop)]


def test_logprobs(openai_client):
    r = openai_client.completions.create(model=SERVED_NAME, prompt="Blood", max_tokens=3,
                                         logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3 and all(len(t) >= 2 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    c = openai_client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=2,
        logprobs=True, top_logprobs=3)
    assert len(c.choices[0].logprobs.content[0].top_logprobs) == 3


def test_missing_or_wrong_api_key_is_401(mofe_server):
    for key in ("wrong-key", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.get(f"{mofe_server.base_url}/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=f"{mofe_server.base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    # Health and metrics stay open for probes and scrapers, as in vLLM.
    assert httpx.get(f"{mofe_server.base_url}/health").status_code == 200


def test_unknown_model_is_404(openai_client):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.completions.create(model="no-such-model@9", prompt="x", max_tokens=1)
    assert err.value.status_code == 404
    assert "no-such-model@9" in str(err.value)


def test_bad_parameters_are_400(openai_client):
    with pytest.raises(openai.BadRequestError):
        openai_client.completions.create(model=SERVED_NAME, prompt="x", max_tokens=1,
                                         temperature=-3)
    with pytest.raises(openai.BadRequestError):
        openai_client.completions.create(model=SERVED_NAME, prompt="x", max_tokens=100000)


def test_tokenize_route(mofe_server):
    r = httpx.post(f"{mofe_server.base_url}/tokenize", json={"model": SERVED_NAME,
                                                             "prompt": "the heart"},
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.json()["count"] == len(r.json()["tokens"]) > 0
