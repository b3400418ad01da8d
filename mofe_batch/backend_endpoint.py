"""Scoring against a running OpenAI-compatible server (`mofe serve`, vLLM, others).

The legacy completions API with `echo=True, logprobs=0, max_tokens=0` returns the
log-probability of every prompt token, which is what lm-eval's `local-completions` model
does too. Prompts are sent as token ids (tokenized here with the model's tokenizer), so the
server scores exactly the tokens lm-eval's HF backend would. One request per option, at most
`concurrency` in flight (asyncio semaphore).
"""

from __future__ import annotations

import asyncio

from .scoring import ScoreItem


class EndpointScorer:
    name = "endpoint"
    domains = None

    def __init__(self, endpoint: str, tokenizer_path: str, api_key: str | None = None,
                 model: str | None = None, concurrency: int = 8, max_model_len: int = 2048,
                 timeout: float = 600.0):
        from openai import OpenAI
        from transformers import AutoTokenizer

        self.base_url = endpoint.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.api_key = api_key or "EMPTY"
        self.timeout = timeout
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        models = OpenAI(base_url=self.base_url, api_key=self.api_key,
                        timeout=timeout).models.list().data
        served = next((m for m in models if m.id == model), models[0] if models else None)
        if served is None:
            raise ValueError(f"{endpoint}: the server lists no models")
        self.model = model or served.id
        # vLLM's /v1/models says the context length; other servers fall back to the option
        limit = getattr(served, "max_model_len", None) or max_model_len
        self.concurrency = max(1, concurrency)
        self.max_len = min(limit, max_model_len) - 1
        self.max_tokens = 0  # falls back to 1 for servers that refuse echo-only requests

    def routing_snapshot(self):
        return None  # a shared server's counters cannot be attributed to this job's rows

    def score(self, items: list[ScoreItem]) -> list[list[float]]:
        return asyncio.run(self._score(items))

    async def _score(self, items: list[ScoreItem]) -> list[list[float]]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key,
                             timeout=self.timeout, max_retries=3)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: ScoreItem, cont: list[int]) -> float:
            prompt = item.context + cont
            async with gate:
                try:
                    resp = await client.completions.create(
                        model=self.model, prompt=prompt, echo=True, logprobs=0,
                        max_tokens=self.max_tokens, temperature=0.0)
                except Exception as exc:  # openai.BadRequestError: retry without max_tokens=0
                    if self.max_tokens != 0 or "max_tokens" not in str(exc):
                        raise
                    self.max_tokens = 1
                    resp = await client.completions.create(
                        model=self.model, prompt=prompt, echo=True, logprobs=0,
                        max_tokens=1, temperature=0.0)
            logprobs = resp.choices[0].logprobs.token_logprobs[:len(prompt)]
            return float(sum(logprobs[len(prompt) - len(cont):]))

        try:
            tasks = [[one(item, c) for c in item.continuations] for item in items]
            flat = await asyncio.gather(*(t for row in tasks for t in row))
        finally:
            await client.close()
        out, k = [], 0
        for item in items:
            out.append(list(flat[k:k + len(item.continuations)]))
            k += len(item.continuations)
        return out

    def close(self) -> None:
        pass
