"""Scoring against a running OpenAI-compatible server (`mofe serve`, vLLM, others).

The legacy completions API with `echo=True, logprobs=0, max_tokens=0` returns the
log-probability of every prompt token, which is what lm-eval's `local-completions` model
does too. Prompts are sent as token ids (tokenized here with the model's tokenizer), so the
server scores exactly the tokens lm-eval's HF backend would. One request per option, at most
`concurrency` in flight (asyncio semaphore).

Routing: every request asks for its own routing summary (`"mofe": {"routing": true}`,
docs/serving.md). `mofe serve` answers with the slots this request routed to each domain, so
a question's routing is the sum over its options' requests: exact per question, whatever
else the shared server runs meanwhile. Other servers ignore the field (no summary: no
routing in the output).
"""

from __future__ import annotations

import asyncio

from .scoring import ScoreItem

OPT_IN = {"mofe": {"routing": True}}


def domain_slots(summary: dict) -> dict[str, int]:
    """Routed slots per domain (all layers, all top-k choices) of one request's summary."""
    total = sum(sum(layer) for layer in summary["tokens"])
    return {d: round(share * total) for d, share in summary["domains"].items()}


class EndpointScorer:
    name = "endpoint"
    domains = None  # set from the first routing summary the server returns

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
        # Per item of the last score() call: routed slots per domain, or None.
        self.item_routing: list[dict[str, int] | None] | None = None

    def routing_snapshot(self):
        return None  # a shared server's counters cannot be attributed to this job's rows

    @property
    def routing_granularity(self) -> str | None:
        if not self.domains:
            return None
        return "per question (each request's own routing summary from the server)"

    def score(self, items: list[ScoreItem]) -> list[list[float]]:
        return asyncio.run(self._score(items))

    async def _score(self, items: list[ScoreItem]) -> list[list[float]]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key,
                             timeout=self.timeout, max_retries=3)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: ScoreItem, cont: list[int]) -> tuple[float, dict | None]:
            prompt = item.context + cont
            async with gate:
                try:
                    resp = await client.completions.create(
                        model=self.model, prompt=prompt, echo=True, logprobs=0,
                        max_tokens=self.max_tokens, temperature=0.0, extra_body=OPT_IN)
                except Exception as exc:  # openai.BadRequestError: retry without max_tokens=0
                    if self.max_tokens != 0 or "max_tokens" not in str(exc):
                        raise
                    self.max_tokens = 1
                    resp = await client.completions.create(
                        model=self.model, prompt=prompt, echo=True, logprobs=0,
                        max_tokens=1, temperature=0.0, extra_body=OPT_IN)
            logprobs = resp.choices[0].logprobs.token_logprobs[:len(prompt)]
            summary = getattr(resp, "mofe_routing", None)
            routed = (domain_slots(summary) if isinstance(summary, dict)
                      and "tokens" in summary else None)
            return float(sum(logprobs[len(prompt) - len(cont):])), routed

        try:
            tasks = [[one(item, c) for c in item.continuations] for item in items]
            flat = await asyncio.gather(*(t for row in tasks for t in row))
        finally:
            await client.close()
        out, routing, k = [], [], 0
        for item in items:
            answers = flat[k:k + len(item.continuations)]
            out.append([ll for ll, _ in answers])
            routing.append(_sum_routed([r for _, r in answers]))
            k += len(item.continuations)
        self.item_routing = routing
        if self.domains is None:
            self.domains = next((list(r) for r in routing if r is not None), None)
        return out

    def close(self) -> None:
        pass


def _sum_routed(parts: list[dict[str, int] | None]) -> dict[str, int] | None:
    """A question's routed slots per domain: the sum over its options' requests (None unless
    every request got a summary)."""
    if not parts or any(p is None for p in parts):
        return None
    total: dict[str, int] = {}
    for part in parts:
        for domain, n in part.items():
            total[domain] = total.get(domain, 0) + n
    return total
