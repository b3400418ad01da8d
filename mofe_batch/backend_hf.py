"""Scoring with plain transformers (`--backend hf`): the lm-eval HF computation, no vLLM.

Used where vLLM is not installed, as the reference the vLLM path is tested against, and for
quick runs on tiny models (it starts in seconds). Sequences are right-padded in batches; a
causal model's logits at real positions do not depend on padding to their right.
"""

from __future__ import annotations

from .scoring import ScoreItem

_DTYPES = {"auto": None, "float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
           "fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
           "float": "float32"}


class HfScorer:
    name = "hf"
    domains = None

    def __init__(self, model: str, dtype: str = "auto", batch_size: int = 16,
                 max_model_len: int | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)  # --threads: torch's intra-op threads

        if dtype not in _DTYPES:
            raise ValueError(f"--dtype {dtype!r}: choose from {', '.join(_DTYPES)}")
        torch_dtype = getattr(torch, _DTYPES[dtype]) if _DTYPES[dtype] else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.batch_size = batch_size
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_len = min(limit, max_model_len or limit)

    def routing_snapshot(self):
        return None

    def score(self, items: list[ScoreItem]) -> list[list[float]]:
        # (item, option or -1, input tokens, target tokens)
        jobs = []
        for i, item in enumerate(items):
            if item.single_token:
                jobs.append((i, -1, item.context, [c[0] for c in item.continuations]))
            else:
                for j, cont in enumerate(item.continuations):
                    jobs.append((i, j, (item.context + cont)[:-1], cont))
        results = [[0.0] * len(item.continuations) for item in items]
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start:start + self.batch_size]
            for (i, j, _, targets), logprobs in zip(batch, self._forward(batch), strict=True):
                if j < 0:
                    results[i] = [float(logprobs[-1, t]) for t in targets]
                else:
                    n = len(targets)
                    rows = logprobs[-n:]
                    results[i][j] = float(sum(rows[k, t] for k, t in enumerate(targets)))
        return results

    def _forward(self, batch):
        import torch

        lengths = [len(inp) for _, _, inp, _ in batch]
        width = max(lengths)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, _, inp, _) in enumerate(batch):
            ids[row, :len(inp)] = torch.tensor(inp)
            mask[row, :len(inp)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        return [logprobs[row, :n] for row, n in enumerate(lengths)]

    def close(self) -> None:
        pass
