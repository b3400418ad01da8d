"""Offline scoring with vLLM's engine (`vllm.LLM`), run in this process.

All questions of a chunk go to the engine in one `generate` call so vLLM batches them.
- Every option one token (" A".." D"): one request per question over the context alone,
  `max_tokens=1` and `logprob_token_ids` = the option tokens: one forward pass per question,
  and logits for the last position only (no per-prompt-token vocabulary softmax).
- Otherwise one request per option over context + continuation with `prompt_logprobs=0`
  (the log-probability of each prompt token), summing the continuation's entries.
`max_tokens=1` means the sampled token is never fed back.

Prefix caching is on: prompts sharing a few-shot or system prefix compute its KV blocks
once. Routing counts therefore cover the tokens the engine *computed*: a prompt block read
from the cache does not pass through the router again. Each item's `computed_tokens` is its
prompt tokens minus the tokens vLLM served from the cache (`RequestOutput.num_cached_tokens`);
per layer, routed slots = top_k x computed tokens, exactly. Requests with `prompt_logprobs`
never read the cache (vLLM needs logits for every prompt token), so they compute everything.

On CPU the engine runs in this process on the cores `mofe_serve.engine.plan_offline_cpus`
chose (`--threads`). vLLM computes logprobs from the raw logits in float32.
"""

from __future__ import annotations

from pathlib import Path

from . import routing
from .scoring import ScoreItem

# KV block size on CPU when prompts share a prefix: the smallest vLLM's CPU attention accepts
# ("MultipleOf(32)"). A prefix is reused in whole blocks, so with the CPU default of 128 up
# to 127 shared tokens per question are recomputed (measured, MMLU 5-shot: 31% of prompt
# tokens computed with 128).
SHARED_PREFIX_CPU_BLOCK = 32


class VllmScorer:
    name = "vllm"

    def __init__(self, model: str, dtype: str = "auto", max_model_len: int | None = None,
                 seed: int = 0, enforce_eager: bool = True, count_routing: bool = True,
                 block_size: int | None = None, threads: int | None = None,
                 prefix_caching: bool = True, shared_prefix: bool = False):
        from mofe_serve.engine import build_llm, plan_offline_cpus

        self.mixtral = routing.is_mixtral(Path(model))
        counting = self.mixtral and count_routing
        self.prefix_caching = prefix_caching
        kwargs = {"block_size": block_size} if block_size is not None else {}
        # Eager: scoring runs a handful of large prefill steps, where torch.compile's start-up
        # cost (about 15 s here) is not won back (benchmarks/README.md, start-up table).
        self.cpu_plan = plan_offline_cpus(threads)
        if shared_prefix and prefix_caching and block_size is None and self.cpu_plan:
            kwargs["block_size"] = SHARED_PREFIX_CPU_BLOCK
        self.llm = build_llm(model, count_routing=counting, cpu_plan=self.cpu_plan,
                             dtype=dtype, max_model_len=max_model_len, seed=seed,
                             enforce_eager=enforce_eager,
                             enable_prefix_caching=prefix_caching, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        config = self.llm.llm_engine.model_config
        self.block_size = self.llm.llm_engine.vllm_config.cache_config.block_size
        self.max_len = config.max_model_len - 1  # room for the one (unused) sampled token
        self.routing = None
        self.domains: list[str] | None = None
        if counting:
            self.routing = routing.EngineRouting(self.llm)
            experts = config.hf_config.num_local_experts
            self.domains = routing.load_domains(Path(model), experts)

    def routing_snapshot(self) -> list[list[int]] | None:
        return self.routing.snapshot() if self.routing else None

    def score(self, items: list[ScoreItem]) -> list[list[float]]:
        """Log-likelihoods per item and option; sets each item's `computed_tokens`."""
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
        outputs = []
        first = self._primer(prompts, params)
        if first:  # the shared prefix is computed once, then read from the cache
            outputs += self.llm.generate(prompts[:first], params[:first], use_tqdm=False)
        outputs += self.llm.generate(prompts[first:], params[first:], use_tqdm=False)
        results = [[0.0] * len(item.continuations) for item in items]
        for item in items:
            item.computed_tokens = 0
        for (i, j), out in zip(owners, outputs, strict=True):
            item = items[i]
            item.computed_tokens += len(out.prompt_token_ids) - (out.num_cached_tokens or 0)
            if j < 0:
                logprobs = out.outputs[0].logprobs[0]
                results[i] = [logprobs[c[0]].logprob for c in item.continuations]
            else:
                cont = item.continuations[j]
                ids = out.prompt_token_ids
                entries = out.prompt_logprobs[len(ids) - len(cont):]
                results[i][j] = sum(e[t].logprob for e, t in zip(entries, cont, strict=True))
        return results

    def _primer(self, prompts, params) -> int:
        """1 when the first request should run alone: the requests share a prefix of at
        least one KV block that only a cache-reading request can reuse. Requests scheduled
        in the same step as the one computing a prefix cannot read it from the cache."""
        if not self.prefix_caching or len(prompts) < 2 or params[0].prompt_logprobs is not None:
            return 0
        import os.path

        shared = os.path.commonprefix([p["prompt_token_ids"] for p in prompts])  # any lists
        return 1 if len(shared) >= self.block_size else 0

    def close(self) -> None:
        from mofe_serve.engine import close_llm

        close_llm(self.llm)
