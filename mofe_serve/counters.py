"""Device-side routing counters: the only MoFE code on the model's hot path.

Two halves, split at the step boundary:

* **Per layer (in the forward): one small op.** Each MoE layer's router copies the
  `topk_ids` / `topk_weights` it already computed into rows `[:num_tokens, layer]` of a
  per-step buffer (`step_ids` int32 and `step_weights` float64, `[max_tokens, layers, top_k]`,
  allocated once at model construction for `max_num_batched_tokens`). Two `copy_` calls into
  fixed addresses: no host sync, no allocation, nothing data-dependent. In eager mode (also
  inside vLLM's MoE custom op on CUDA, which torch.compile does not trace) they run into
  views cached per (layer, rows): about 2-3 us per layer on CPU. Where torch.compile traces
  the router (vLLM on CPU), the two slice copies are traced as in-place stores into the
  buffers. Inside CUDA-graph capture the copy kernels are captured and replayed with the
  graph's fixed input buffers.
* **Once per step (after the forward, outside any graph): `aggregate`.** One `index_add_`
  pair turns the first `num_tokens` rows of the buffer into `[group][layer][expert]` counts
  and summed gate weights, for any per-token group index: all tokens into one group for the
  server-wide totals (`end_step`), each token's request slot for per-request summaries
  (`mofe_serve.request_routing`), or a variant index for several models in one engine.

Rows are masked, never skipped on the host inside the forward:
- only rows `[:num_tokens]` (the step's real tokens) are read: CUDA-graph padding rows come
  after them (vLLM's `is_padding` mask is False exactly for the first `num_tokens_unpadded`
  rows), and rows of earlier, larger steps are never read again;
- `enabled` (a host flag, set by RPC between steps) is off until the server finishes
  start-up; vLLM's profiling / compile / warm-up runs never reach `end_step` anyway (they run
  the model outside `execute_model`), so they count nothing;
- a group index equal to `num_groups` means "not counted" (e.g. requests that did not opt
  in); `aggregate` adds those rows to a spare last group that callers ignore.
"""

from __future__ import annotations

import torch
from torch import nn


def aggregate_step(step_ids: torch.Tensor, step_weights: torch.Tensor,
                   layer_offset: torch.Tensor, one: torch.Tensor, num_tokens: int,
                   group_index: torch.Tensor | None, group_stride: int,
                   tokens_out: torch.Tensor, gate_out: torch.Tensor) -> None:
    """Add the step's routing (rows [:num_tokens] of `step_ids`/`step_weights`, shape
    [max_tokens, layers, top_k]) into flat accumulators laid out [group][layer][expert].

    `layer_offset` is `arange(layers).view(1, -1, 1) * experts` (int64) and `one` a 1-element
    tensor of `tokens_out`'s dtype, both on the buffer's device; `group_stride` is
    layers * experts. `group_index` (int64, [num_tokens]) names each token's group; None puts
    every token in group 0. Pure device work: a handful of ops whatever the batch, no host
    sync, no data-dependent shape, so it may also run inside a captured graph of fixed
    `num_tokens`.
    """
    slots = step_ids[:num_tokens] + layer_offset  # [n, layers, top_k] int64, contiguous
    if group_index is not None:
        slots = torch.add(slots, group_index.view(-1, 1, 1), alpha=group_stride)
    slots = slots.view(-1)
    tokens_out.index_add_(0, slots, one.expand(slots.shape[0]))
    gate_out.index_add_(0, slots, step_weights[:num_tokens].view(-1))


# Record views are cached for steps up to this many tokens (decode-sized steps, where the
# slicing would cost as much as the copy); bigger steps slice each time.
_VIEW_CACHE_MAX_TOKENS = 1024


class RoutingCounters(nn.Module):
    """The per-step routing buffer of one model and its cumulative per-(layer, expert)
    totals (token counts and summed gate weights)."""

    def __init__(self, num_layers: int, num_experts: int, top_k: int, max_tokens: int):
        super().__init__()
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.max_tokens = max_tokens
        # Non-persistent buffers: moved with the model, never looked for in checkpoints.
        # Token-major, so a step's rows [:num_tokens] are one contiguous block.
        step_shape = (max_tokens, num_layers, top_k)
        self.register_buffer("step_ids", torch.zeros(step_shape, dtype=torch.int32),
                             persistent=False)
        # float64 like the totals: the copy converts, the aggregation needs no extra cast.
        self.register_buffer("step_weights", torch.zeros(step_shape, dtype=torch.float64),
                             persistent=False)
        size = num_layers * num_experts
        self.register_buffer("tokens", torch.zeros(size, dtype=torch.int64), persistent=False)
        # float64 so sums of millions of weights in [0, 1] stay exact enough for rates.
        self.register_buffer("gate_weight", torch.zeros(size, dtype=torch.float64),
                             persistent=False)
        self.register_buffer(
            "layer_offset",
            (torch.arange(num_layers, dtype=torch.int64) * num_experts).view(1, -1, 1),
            persistent=False)
        self.register_buffer("one", torch.ones(1, dtype=torch.int64), persistent=False)
        self.enabled = False  # host flag: start-up and warm-up count nothing
        self._views: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # Several models in one engine (a MoFE family): totals per variant, grouped by the
        # model's per-token variant index (set_variants).
        self.num_variants = 1
        self._token_variant: tuple[torch.Tensor, ...] = ()

    def set_variants(self, token_variant: torch.Tensor, num_variants: int) -> None:
        """Keep the totals per variant, [variant][layer][expert], grouping each step's tokens
        by `token_variant` (the family model's per-token variant buffer, filled before each
        step). Called at model construction, before anything is counted."""
        size = num_variants * self.num_layers * self.num_experts
        device = self.tokens.device
        self.tokens = torch.zeros(size, dtype=torch.int64, device=device)
        self.gate_weight = torch.zeros(size, dtype=torch.float64, device=device)
        self.num_variants = num_variants
        self._token_variant = (token_variant,)  # a tuple: not a second buffer of this module

    def _apply(self, fn, *args, **kwargs):
        self._views.clear()  # buffers are replaced when the module moves
        return super()._apply(fn, *args, **kwargs)

    # --- hot path: once per MoE layer per forward ------------------------------------------
    def record(self, layer: int, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> None:
        n = topk_ids.shape[0]
        if torch.compiler.is_compiling():
            # Traced: two slice copies into the buffers (graph inputs), which the compiler
            # keeps as in-place stores. Measured on CPU with inductor: ~4 us per layer, vs
            # ~16 us through an opaque custom op (its Python dispatch on every call).
            self.step_ids[:n, layer].copy_(topk_ids)
            self.step_weights[:n, layer].copy_(topk_weights)
            return
        # Eager: the same two copies, into views cached per (layer, rows).
        views = self._views.get((layer, n))
        if views is None:
            views = (self.step_ids[:n, layer], self.step_weights[:n, layer])
            if n <= _VIEW_CACHE_MAX_TOKENS:
                self._views[(layer, n)] = views
        views[0].copy_(topk_ids)
        views[1].copy_(topk_weights)

    # --- once per step, after the forward ---------------------------------------------------
    def aggregate(self, num_tokens: int, group_index: torch.Tensor | None = None,
                  num_groups: int = 1, tokens_out: torch.Tensor | None = None,
                  gate_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's routing per group: (tokens [G, layers, experts] int64, summed gate
        weights [G, layers, experts] float64), G = `num_groups`.

        `group_index` (int64, [num_tokens], on the counters' device) gives each of the
        step's tokens a group in [0, num_groups]; the value `num_groups` means "not counted"
        and lands in a spare last group (requests that did not opt in, padding). Without it
        every token is in group 0. Adds into `tokens_out`/`gate_out` (flat, int64/float64,
        (G + 1) * layers * experts elements, G * layers * experts without `group_index`)
        when given, so callers keep running sums in fixed buffers; else into new zeros.
        """
        per_group = self.num_layers * self.num_experts
        rows = num_groups + (0 if group_index is None else 1)
        if group_index is not None and group_index.shape[0] != num_tokens:
            raise ValueError(f"group_index has {group_index.shape[0]} rows for "
                             f"{num_tokens} tokens")
        if not 0 <= num_tokens <= self.max_tokens:
            raise ValueError(f"{num_tokens} tokens in a step: the routing buffer holds "
                             f"{self.max_tokens} (max_num_batched_tokens)")
        device = self.step_ids.device
        if tokens_out is None:
            tokens_out = torch.zeros(rows * per_group, dtype=torch.int64, device=device)
        if gate_out is None:
            gate_out = torch.zeros(rows * per_group, dtype=torch.float64, device=device)
        if tokens_out.numel() < rows * per_group or gate_out.numel() < rows * per_group:
            raise ValueError(f"accumulators need {rows * per_group} elements")
        if num_tokens:
            aggregate_step(self.step_ids, self.step_weights, self.layer_offset, self.one,
                           num_tokens, group_index, per_group, tokens_out, gate_out)
        shape = (rows, self.num_layers, self.num_experts)
        return (tokens_out[:rows * per_group].view(shape)[:num_groups],
                gate_out[:rows * per_group].view(shape)[:num_groups])

    def end_step(self, num_tokens: int) -> None:
        """Add the step's first `num_tokens` rows to the server-wide totals (if enabled),
        per variant when the model serves several."""
        if self.enabled and num_tokens:
            group = self._token_variant[0][:num_tokens] if self._token_variant else None
            aggregate_step(self.step_ids, self.step_weights, self.layer_offset, self.one,
                           num_tokens, group, self.num_layers * self.num_experts,
                           self.tokens, self.gate_weight)

    # --- host-side control, between engine steps (worker RPC), never per token ---------------
    def set_enabled(self, on: bool) -> None:
        self.enabled = bool(on)

    def reset(self) -> None:
        self.tokens.zero_()
        self.gate_weight.zero_()

    def snapshot(self) -> dict:
        """Cumulative totals, [layer][expert] (summed over variants); with several variants
        also `variants`: one {"tokens", "gate_weight"} per variant index."""
        shape = (self.num_variants, self.num_layers, self.num_experts)
        tokens, gate = self.tokens.view(shape), self.gate_weight.view(shape)
        out = {
            "num_layers": self.num_layers, "num_experts": self.num_experts, "top_k": self.top_k,
            "enabled": self.enabled,
            "tokens": tokens.sum(0).tolist(),
            "gate_weight": gate.sum(0).tolist(),
        }
        if self.num_variants > 1:
            out["variants"] = [{"tokens": t, "gate_weight": g}
                               for t, g in zip(tokens.tolist(), gate.tolist(), strict=True)]
        return out
