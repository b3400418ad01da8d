"""`--worker-cls` for a family engine: fills the per-token variant index before each step.

vLLM's worker builds each step on the host (`_prepare_inputs`: which requests, how many
tokens each, in which order). Right after that, and before the forward pass, this worker's
model runner writes, from the same host data:
- `VariantIndex.token_variant[:num_tokens]`: each scheduled token's variant, one host-to-device
  copy (the variant of a request comes from its `SamplingParams.extra_args`, set by the API
  server from the request's `model`: mofe_serve.family_serving);
- the `LogitsPlan` of the step: which logits rows (one per request) go through which
  variant's lm_head.
Prompt logprobs are computed request by request (vLLM's own loop); each request's call gets
a one-variant plan.

The worker class is the platform's own (CPU or GPU worker) with its model runner's class
extended by `FamilyRunnerMixin` after construction; vLLM's V2 model runner is not supported.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from vllm.platforms import current_platform

from .engine import VARIANT_ARG
from .family_model import LogitsPlan

logger = logging.getLogger("mofe_serve.family_worker")

if current_platform.is_cpu():
    from vllm.v1.worker.cpu_worker import CPUWorker as _PlatformWorker
else:
    from vllm.v1.worker.gpu_worker import Worker as _PlatformWorker


def family_model(runner):
    """The family model under any wrapper the runner put around it (CUDA graphs)."""
    model = runner.get_model()
    while not hasattr(model, "mofe_variant_index") and hasattr(model, "unwrap"):
        model = model.unwrap()
    if not hasattr(model, "mofe_variant_index"):
        raise RuntimeError(f"{type(model).__name__} is not a family model "
                           "(MoFEFamilyMixtralForCausalLM)")
    return model


class FamilyRunnerMixin:
    """Model-runner methods that run on the host between steps; none inside the forward."""

    def _mofe_variant_of(self, req_id: str, num_variants: int) -> int:
        params = self.requests[req_id].sampling_params
        variant = (getattr(params, "extra_args", None) or {}).get(VARIANT_ARG)
        if isinstance(variant, int) and not isinstance(variant, bool) \
                and 0 <= variant < num_variants:
            return variant
        # The API server sets a valid index on every request (family_serving refuses any
        # request without one), so this is a bug; one bad request must not stop the engine.
        logger.error("request %s has no valid %s (%r): served by variant 0", req_id,
                     VARIANT_ARG, variant)
        return 0

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens: np.ndarray):
        result = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        self._mofe_fill_variant_index(num_scheduled_tokens)
        return result

    def _mofe_fill_variant_index(self, num_scheduled_tokens: np.ndarray) -> None:
        model = family_model(self)
        index = model.mofe_variant_index
        num_reqs = self.input_batch.num_reqs
        req_variant = np.fromiter(
            (self._mofe_variant_of(r, index.num_variants)
             for r in self.input_batch.req_ids[:num_reqs]), dtype=np.int64, count=num_reqs)
        token_variant = np.repeat(req_variant, num_scheduled_tokens[:num_reqs])
        num_tokens = token_variant.shape[0]
        if num_tokens > index.token_variant.shape[0]:
            raise RuntimeError(f"{num_tokens} tokens in a step, variant index holds "
                               f"{index.token_variant.shape[0]}")
        host = self._mofe_host_buffer(index.token_variant)
        host.numpy()[:num_tokens] = token_variant
        if host is not index.token_variant:
            index.token_variant[:num_tokens].copy_(host[:num_tokens], non_blocking=True)
        # One logits row per request, in batch order (no speculative decoding).
        variants = np.unique(req_variant)
        if variants.shape[0] > 1 and not getattr(self, "_mofe_mixed_logged", False):
            self._mofe_mixed_logged = True
            logger.info("family: first step mixing %d variants (%d tokens, %d requests) in "
                        "one forward pass", variants.shape[0], num_tokens, num_reqs)
        if variants.shape[0] == 1:
            groups = ((int(variants[0]), None),)
        else:
            device = index.token_variant.device
            groups = tuple(
                (int(v), torch.from_numpy(np.flatnonzero(req_variant == v)).to(
                    device, non_blocking=True)) for v in variants)
        model.mofe_logits_plan = LogitsPlan(num_reqs, groups)

    def _mofe_host_buffer(self, device_buffer: torch.Tensor) -> torch.Tensor:
        host = getattr(self, "_mofe_host_variant", None)
        if host is None:
            if device_buffer.device.type == "cpu":
                host = device_buffer  # CPU: the index is written in place
            else:
                host = torch.zeros_like(device_buffer, device="cpu",
                                        pin_memory=current_platform.is_pin_memory_available())
            self._mofe_host_variant = host
        return host

    def _get_prompt_logprobs_dict(self, hidden_states, num_scheduled_tokens):
        if not self.num_prompt_logprobs:
            return {}
        model = family_model(self)
        num_variants = model.mofe_variant_index.num_variants
        out = {}
        for req_id in list(self.num_prompt_logprobs):
            if req_id not in num_scheduled_tokens:
                continue
            # vLLM's loop, one request at a time, each through its own variant's lm_head.
            model.mofe_logits_plan = LogitsPlan(
                None, ((self._mofe_variant_of(req_id, num_variants), None),))
            out.update(super()._get_prompt_logprobs_dict(
                hidden_states, {req_id: num_scheduled_tokens[req_id]}))
        model.mofe_logits_plan = None
        return out


_RUNNER_CLASSES: dict[type, type] = {}


def family_runner_class(base: type) -> type:
    if base not in _RUNNER_CLASSES:
        _RUNNER_CLASSES[base] = type(f"Family{base.__name__}", (FamilyRunnerMixin, base), {})
    return _RUNNER_CLASSES[base]


class FamilyWorker(_PlatformWorker):
    def init_device(self) -> None:
        from .engine import use_vllm_log_handlers

        use_vllm_log_handlers()  # our log lines in the worker appear among vLLM's
        super().init_device()
        if getattr(self, "use_v2_model_runner", False):
            raise RuntimeError("serving a MoFE family needs vLLM's V1 model runner "
                               "(set VLLM_USE_V2_MODEL_RUNNER=0)")
        # Same object, same state: only the host-side step preparation is extended.
        self.model_runner.__class__ = family_runner_class(type(self.model_runner))
