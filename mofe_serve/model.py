"""`MoFEMixtralForCausalLM`: vLLM's Mixtral with per-layer routing counters, reading both
checkpoint layouts.

Everything numeric stays vLLM's: the gate, the FusedMoE layer, its kernels and its router.
We only wrap each layer's router so the (topk_ids, topk_weights) it already computed are
also copied into the per-step routing buffer (counters.py), aggregated once per step
after the forward (step_routing.py). Wrapping the router, rather than
recomputing top-k from the logits, counts exactly the experts the fused kernel ran.

Loading: vLLM's Mixtral reads the per-expert layout only. `load_weights` hands each fused
tensor to vLLM's own loader as per-expert views (model_registry.checkpoint owns the names
and the slicing; docs/format.md), so FusedMoE's expert mapping and weight loaders, with
their tensor-parallel sharding, do the rest exactly as for a per-expert checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from vllm.config import VllmConfig
from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter
from vllm.model_executor.models.mixtral import MixtralForCausalLM, MixtralMoE
from vllm.model_executor.models.utils import PPMissingLayer

from model_registry.checkpoint import per_expert_items

from .counters import RoutingCounters


class CountingRouter(FusedMoERouter):
    """Delegates routing to vLLM's router for the layer and records what it chose."""

    def __init__(self, inner: FusedMoERouter, counters: RoutingCounters, layer: int):
        super().__init__(eplb_state=inner.eplb_state)
        self.inner, self.counters, self.layer = inner, counters, layer

    @property
    def routing_method_type(self):
        return self.inner.routing_method_type

    def set_capture_fn(self, capture_fn: Callable[[torch.Tensor], None] | None) -> None:
        self.inner.set_capture_fn(capture_fn)

    def _select_experts(self, hidden_states, router_logits, topk_indices_dtype=None, *,
                        input_ids=None):
        topk_weights, topk_ids = self.inner._select_experts(
            hidden_states, router_logits, topk_indices_dtype, input_ids=input_ids)
        self.counters.record(self.layer, topk_ids, topk_weights)
        return topk_weights, topk_ids

    def __getattr__(self, name: str):
        # Anything else (top_k, renormalize, ...) that kernels read off the router.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class MoFEMixtralForCausalLM(MixtralForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_config
        if vllm_config.parallel_config.enable_eplb:
            raise ValueError("MoFEMixtralForCausalLM counts logical experts; EPLB is not "
                             "supported (drop --enable-eplb)")
        # A submodule of the compiled MixtralModel, so its buffers are ordinary graph inputs.
        # The per-step buffer holds the largest step the runner schedules.
        self.model.mofe_counters = RoutingCounters(
            config.num_hidden_layers, config.num_local_experts, config.num_experts_per_tok,
            max_tokens=vllm_config.scheduler_config.max_num_batched_tokens)
        for index, layer in enumerate(self.model.layers):
            if isinstance(layer, PPMissingLayer):
                continue
            moe = layer.block_sparse_moe
            assert isinstance(moe, MixtralMoE)
            moe.experts.router = CountingRouter(moe.experts.router, self.model.mofe_counters,
                                                index)

    @property
    def mofe_counters(self) -> RoutingCounters:
        return self.model.mofe_counters

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # Either layout: fused tensors arrive as per-expert views (no copy, no cache dir).
        return super().load_weights(
            item for name, tensor in weights for item in per_expert_items(name, tensor))
