"""Choosing the scorer for a job: vLLM offline (default), transformers, or an endpoint."""

from __future__ import annotations

from pathlib import Path

from .config import BatchConfig


def resolve_model(ref: str) -> tuple[str, str, Path | None]:
    """(what the engine loads, display name, source checkpoint dir or None for hub ids).

    Uses the serving side's resolver (registry refs); the engine reads either layout.
    A REF that is neither a local checkpoint nor a registered name is passed through as a
    hub id (only where the environment allows downloads).
    """
    from mofe_serve.resolve import resolve_model_ref

    try:
        source, display = resolve_model_ref(ref)
    except Exception as exc:
        if Path(ref).exists() or "@" in ref:
            raise
        if "/" not in ref:
            raise ValueError(f"{ref}: not a checkpoint directory, registered model or hub "
                             f"id ({exc})") from exc
        return ref, ref, None
    return str(source), display, source


def make_scorer(cfg: BatchConfig, engine_path: str, source: Path | None):
    if cfg.endpoint:
        from .backend_endpoint import EndpointScorer

        tokenizer = str(source) if source is not None else engine_path
        return EndpointScorer(cfg.endpoint, tokenizer, api_key=cfg.api_key,
                              model=cfg.served_model, concurrency=cfg.concurrency,
                              max_model_len=cfg.max_model_len or 1 << 30)
    if cfg.backend == "hf":
        from .backend_hf import HfScorer

        return HfScorer(str(source or engine_path), dtype=cfg.dtype,
                        max_model_len=cfg.max_model_len, threads=cfg.threads)
    from .backend_vllm import VllmScorer

    scorer = VllmScorer(engine_path, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                        seed=cfg.seed, threads=cfg.threads,
                        # few-shot, chat or custom prompts: likely a shared prefix
                        shared_prefix=bool(cfg.shots or cfg.chat_template or cfg.template))
    if scorer.routing is not None and source is not None:
        from .routing import load_domains

        scorer.domains = load_domains(source, len(scorer.domains))
    return scorer
