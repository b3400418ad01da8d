"""Device-side routing counters: the only MoFE code on the model's hot path.

One `RoutingCounters` per model holds flat [layers * experts] buffers allocated once at
model construction. Each MoE layer's router adds its top-k choices with `index_add_` through
an opaque custom op (`torch.ops.mofe.record_routing`): no host sync, no `.item()`, no
bincount, fixed buffer addresses, so it is safe under torch.compile (Dynamo does not trace
into the op) and inside CUDA-graph capture (the op's kernels are captured and replayed).

Rows are masked on the device, never skipped on the host:
- `enabled` (a 1-element int64 buffer) is 0 until the server finishes start-up, so vLLM's
  profiling / compile / warm-up runs count nothing. It is flipped by RPC between steps.
- vLLM's forward context carries `is_padding` (True for rows added to reach a CUDA-graph
  batch size; all True in dummy runs); those rows are masked out.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.forward_context import get_forward_context, is_forward_context_available

_OP_LIB = torch.library.Library("mofe", "FRAGMENT")  # keep alive: owns the op registration


def _padding_rows(num_tokens: int) -> torch.Tensor | None:
    """vLLM's per-step padding mask (bool [num_tokens]) when the runner set one."""
    if not is_forward_context_available():
        return None
    is_padding = get_forward_context().is_padding
    if is_padding is None or is_padding.shape[0] != num_tokens:
        return None
    return is_padding


def record_routing_impl(topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                        tokens: torch.Tensor, gate_weight: torch.Tensor,
                        enabled: torch.Tensor, offset: int) -> None:
    num_tokens, top_k = topk_ids.shape
    is_padding = _padding_rows(num_tokens)
    if is_padding is None:
        keep = enabled.expand(num_tokens * top_k)
    else:
        keep = (enabled * is_padding.logical_not()).repeat_interleave(top_k)
    slots = topk_ids.reshape(-1) + offset  # int32 or int64: index_add_ takes both
    tokens.index_add_(0, slots, keep)
    gate_weight.index_add_(0, slots, (topk_weights.reshape(-1) * keep).to(gate_weight.dtype))


def _record_routing_fake(topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                         tokens: torch.Tensor, gate_weight: torch.Tensor,
                         enabled: torch.Tensor, offset: int) -> None:
    return None


def _register_op() -> None:
    from vllm.utils.torch_utils import direct_register_custom_op

    direct_register_custom_op(
        op_name="record_routing", op_func=record_routing_impl,
        mutates_args=["tokens", "gate_weight"], fake_impl=_record_routing_fake,
        target_lib=_OP_LIB)


_register_op()


class RoutingCounters(nn.Module):
    """Cumulative per-(layer, expert) token counts and summed gate weights."""

    def __init__(self, num_layers: int, num_experts: int, top_k: int):
        super().__init__()
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        size = num_layers * num_experts
        # Non-persistent buffers: moved with the model, never looked for in checkpoints.
        self.register_buffer("tokens", torch.zeros(size, dtype=torch.int64), persistent=False)
        # float64 so sums of millions of weights in [0, 1] stay exact enough for rates.
        self.register_buffer("gate_weight", torch.zeros(size, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("enabled", torch.zeros(1, dtype=torch.int64), persistent=False)

    def record(self, layer: int, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> None:
        torch.ops.mofe.record_routing(topk_ids, topk_weights, self.tokens, self.gate_weight,
                                      self.enabled, layer * self.num_experts)

    # Host-side control, called between engine steps (worker RPC), never per token.
    def set_enabled(self, on: bool) -> None:
        self.enabled.fill_(1 if on else 0)

    def reset(self) -> None:
        self.tokens.zero_()
        self.gate_weight.zero_()

    def snapshot(self) -> dict:
        shape = (self.num_layers, self.num_experts)
        return {
            "num_layers": self.num_layers, "num_experts": self.num_experts, "top_k": self.top_k,
            "enabled": bool(self.enabled.item()),
            "tokens": self.tokens.view(shape).tolist(),
            "gate_weight": self.gate_weight.view(shape).tolist(),
        }
