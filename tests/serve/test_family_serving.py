"""`mofe serve A B C`: three variants of one MoFE family from one engine.

The family: the kit's four experts merged once, then three real MoFE training runs of a few
steps from that merge with seeds 1, 2, 3 (training/test_models.py `build_kit_family`: the
production `run_training`, experts frozen). The variants share every expert tensor and
differ everywhere else; their greedy outputs differ.

One family server (eager, fp32, prefix caching off, as the session server) runs the whole
module. The exactness check starts each variant alone with `mofe serve` afterwards, one at a
time, as the reference: the family server must answer every variant's requests, sent all at
once and mixed in the same engine steps, token for token and logprob for logprob as the
variant's own server does.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from session_server import API_KEY, ENGINE_ARGS

from .routing_client import scrape, transformers_routing_counts

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PROMPTS = ["The heart pumps blood through", "Paris is the capital of",
           "To cook rice you first", "Aspirin is a drug that", "The river flows into the",
           "Patients with fever should"]
MAX_TOKENS = 12
TOP_LOGPROBS = 4


@pytest.fixture(scope="module")
def family(kit, tmp_path_factory) -> list[Path]:
    from training.test_models import build_kit_family

    return build_kit_family(kit, tmp_path_factory.mktemp("family"), variants=3)


def _server(refs: list[Path], log: Path):
    from mofe_serve.server_process import MofeServer

    server = MofeServer(refs[0], log, api_key=API_KEY,
                        extra=[*map(str, refs[1:]), "--enforce-eager", *ENGINE_ARGS])
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def family_server(family, tmp_path_factory):
    server = _server(family, tmp_path_factory.mktemp("family-logs") / "family.log")
    yield server
    leftovers = server.stop()
    assert not leftovers, f"unclean shutdown after SIGTERM: {leftovers}"


def _client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key,
                         max_retries=0, timeout=300)


def _complete(client, model: str, prompt: str) -> dict:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS,
                                  temperature=0, logprobs=TOP_LOGPROBS)
    choice = r.choices[0]
    return {"model": r.model, "text": choice.text, "tokens": choice.logprobs.tokens,
            "token_logprobs": choice.logprobs.token_logprobs,
            "top_logprobs": choice.logprobs.top_logprobs}


def _chat(client, model: str, prompt: str) -> dict:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
        temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS)
    content = r.choices[0].logprobs.content
    return {"model": r.model, "text": r.choices[0].message.content,
            "top_logprobs": [[(t.token, t.logprob) for t in c.top_logprobs] for c in content]}


def _load(server, jobs: list[tuple[str, str, str]]) -> list[dict]:
    """All jobs (kind, model, prompt) at once, from as many threads."""
    client = _client(server)
    call = {"completion": _complete, "chat": _chat}
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda j: call[j[0]](client, j[1], j[2]), jobs))


def _jobs(model: str) -> list[tuple[str, str, str]]:
    return ([("completion", model, p) for p in PROMPTS]
            + [("chat", model, p) for p in PROMPTS[:2]])


def test_every_variant_is_listed_and_names_pick_it(family_server, family):
    client = _client(family_server)
    listed = {m.id for m in client.models.list().data}
    assert listed == {p.name for p in family}  # plain paths: NAME = directory name
    for path in family:
        assert client.models.retrieve(path.name).id == path.name
    import openai

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="not-a-variant", prompt="hi", max_tokens=1)
    # A client cannot run one variant under another's name: `model` decides.
    def text(**extra) -> str:
        r = httpx.post(f"{family_server.base_url}/v1/completions",
                       headers={"Authorization": f"Bearer {API_KEY}"},
                       json={"model": family[0].name, "prompt": PROMPTS[0], "max_tokens": 8,
                             "temperature": 0, **extra})
        assert r.status_code == 200 and r.json()["model"] == family[0].name
        return r.json()["choices"][0]["text"]

    assert text(vllm_xargs={"mofe_variant": 2}) == text()


def test_mixed_load_equals_each_variant_served_alone(family_server, family, tmp_path):
    jobs = [job for path in family for job in _jobs(path.name)]
    mixed = _load(family_server, jobs)
    log = family_server.log.read_text(errors="replace")
    assert "family: first step mixing" in log, "no engine step held several variants"
    per_variant = len(jobs) // len(family)
    outputs = {}
    for i, path in enumerate(family):
        server = _server([path], tmp_path / f"alone-{i}.log")
        try:
            alone = _load(server, _jobs(path.name))
        finally:
            assert not server.stop()
        got = mixed[i * per_variant:(i + 1) * per_variant]
        for job, want, have in zip(_jobs(path.name), alone, got, strict=True):
            assert have["model"] == want["model"] == path.name
            assert have["text"] == want["text"], (job, have["text"], want["text"])
            # fp32, same kernels: the logprobs are bit-identical, not merely close.
            assert have["top_logprobs"] == want["top_logprobs"], job
        outputs[path.name] = [r["text"] for r in alone]
    # The variants really differ: a request served by the wrong variant would be caught.
    texts = list(outputs.values())
    assert texts[0] != texts[1] and texts[1] != texts[2] and texts[0] != texts[2]


def test_routing_per_variant(family_server, family):
    from transformers import AutoTokenizer

    headers = {"Authorization": f"Bearer {API_KEY}"}
    base = family_server.base_url
    tok = AutoTokenizer.from_pretrained(family[0])
    prompts = {path.name: [tok(t)["input_ids"] for t in PROMPTS[i::len(family)]]
               for i, path in enumerate(family)}
    reset = httpx.post(f"{base}/v1/routing/reset", headers=headers).json()
    assert reset["models"] == [p.name for p in family]
    client = _client(family_server)
    jobs = [(name, ids) for name, batch in prompts.items() for ids in batch]
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda j: client.completions.create(model=j[0], prompt=j[1],
                                                          max_tokens=1), jobs))
    # A snapshot whose read started after the last response holds every step; one taken
    # between steps (newer than the reset) can miss the last of them. An idle server reads
    # every 30 s.
    finished = time.time()
    deadline = time.monotonic() + 75
    while True:
        listing = httpx.get(f"{base}/v1/routing", headers=headers).json()
        if all(entry["updated_at"] > finished for entry in listing["data"]):
            break
        assert time.monotonic() < deadline, "routing counts not refreshed"
        time.sleep(0.2)
    assert [e["model"] for e in listing["data"]] == [p.name for p in family]
    for path in family:
        one = httpx.get(f"{base}/v1/routing", params={"model": path.name},
                        headers=headers).json()
        assert one["model"] == path.name
        top_k = one["top_k"]
        sent = sum(len(ids) for ids in prompts[path.name])
        # The sum invariant, per variant and per layer (max_tokens=1: prompt tokens only).
        assert all(sum(layer) == top_k * sent for layer in one["tokens"])
        # Each variant's own router, as transformers runs it on that variant's checkpoint.
        assert one["tokens"] == transformers_routing_counts(path, prompts[path.name])
    unknown = httpx.get(f"{base}/v1/routing", params={"model": "nope"}, headers=headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    # Prometheus: the mofe_expert_* series of every variant, told apart by `model`.
    samples = scrape(family_server)["mofe_expert_tokens"]
    assert {s.labels["model"] for s in samples} == {p.name for p in family}


def test_refuses_variants_with_other_experts(family, tmp_path):
    """Start-up names the first differing expert and layer; no engine is started."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from mofe_serve.server_process import MOFE

    other = tmp_path / "other"
    shutil.copytree(family[1], other)
    weights = other / "model.safetensors"
    tensors = load_file(str(weights))
    name = "model.layers.2.mlp.experts.gate_up_proj"  # fused layout: [E, 2I, H]
    changed = tensors[name].copy()
    rows = changed.shape[1] // 2
    changed[1, rows + 3, 0] = np.float32(changed[1, rows + 3, 0] + 1.0)  # expert 1, w3
    tensors[name] = changed
    save_file(tensors, str(weights), metadata={"format": "pt"})
    proc = subprocess.run([MOFE, "serve", str(family[0]), str(other), "--port", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "expert 1 of layer 2 (w3) differs" in proc.stderr, proc.stderr
