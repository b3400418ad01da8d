"""Offline scoring with vLLM's in-process engine (`vllm.LLM`).

All questions of a chunk go to the engine in one `generate` call so vLLM batches them.
- Every option one token (" A".." D"): one request per question over the context alone,
  `max_tokens=1` and `logprob_token_ids` = the option tokens: one forward pass per question.
- Otherwise one request per option over context + continuation with `prompt_logprobs=0`
  (the log-probability of each prompt token), summing the continuation's entries.
`max_tokens=1` means the sampled token is never fed back, so routing counts cover exactly
the scored prompt tokens. Prompt blocks served from vLLM's prefix cache never pass through
the router, so prefix caching is off whenever routing is counted (on otherwise).
vLLM computes logprobs from the raw logits in float32.
"""

from __future__ import annotations

from pathlib import Path

from . import routing
from .scoring import ScoreItem


class VllmScorer:
    name = "vllm"

    def __init__(self, model: str, dtype: str = "auto", max_model_len: int | None = None,
                 seed: int = 0, enforce_eager: bool = True, count_routing: bool = True,
                 block_size: int | None = None):
        from mofe_serve.engine import build_llm

        self.mixtral = routing.is_mixtral(Path(model))
        counting = self.mixtral and count_routing
        # Cached prompt blocks skip the router: exact counts need every prompt token computed.
        self.prefix_caching = not counting
        kwargs = {"block_size": block_size} if block_size is not None else {}
        self.llm = build_llm(model, count_routing=counting, dtype=dtype,
                             max_model_len=max_model_len, seed=seed,
                             enforce_eager=enforce_eager,
                             enable_prefix_caching=self.prefix_caching, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        config = self.llm.llm_engine.model_config
        self.max_len = config.max_model_len - 1  # room for the one (unused) sampled token
        self.routing = None
        self.domains: list[str] | None = None
        if self.mixtral and count_routing:
            self.routing = routing.EngineRouting(self.llm)
            experts = config.hf_config.num_local_experts
            self.domains = routing.load_domains(Path(model), experts)

    def routing_snapshot(self) -> list[list[int]] | None:
        return self.routing.snapshot() if self.routing else None

    def score(self, items: list[ScoreItem]) -> list[list[float]]:
        from vllm import SamplingParams, TokensPrompt

        prompts, params, owners = [], [], []  # owners: (item index, option or -1 for all)
        for i, item in enumerate(items):
            if item.single_token:
                prompts.append(TokensPrompt(prompt_token_ids=item.context))
                params.append(SamplingParams(
                    max_tokens=1, temperature=0.0, detokenize=False,
                    logprob_token_ids=[c[0] for c in item.continuations]))
                owners.append((i, -1))
            else:
                for j, cont in enumerate(item.continuations):
                    prompts.append(TokensPrompt(prompt_token_ids=item.context + cont))
                    params.append(SamplingParams(max_tokens=1, temperature=0.0,
                                                 detokenize=False, prompt_logprobs=0))
                    owners.append((i, j))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = [[0.0] * len(item.continuations) for item in items]
        for (i, j), out in zip(owners, outputs, strict=True):
            item = items[i]
            if j < 0:
                first = out.outputs[0].logprobs[0]
                results[i] = [first[c[0]].logprob for c in item.continuations]
            else:
                cont = item.continuations[j]
                ids = out.prompt_token_ids
                entries = out.prompt_logprobs[len(ids) - len(cont):]
                results[i][j] = sum(e[t].logprob for e, t in zip(entries, cont, strict=True))
        return results

    def close(self) -> None:
        from mofe_serve.engine import close_llm

        close_llm(self.llm)
