"""Worker side, once per engine step: aggregate the step's routing buffer after the forward.

`StepRouting.install(runner, counters)` wraps the model runner's `execute_model` (on the
instance; vLLM's worker calls `self.model_runner.execute_model`). Before the step it reads
the scheduler output on the host (which requests opted in, how many of their tokens are
prompt); after the forward it runs `RoutingCounters.aggregate` once or twice:

* always: all of the step's tokens into the server-wide totals (`end_step`);
* only when an opted-in request is in the step: each token into its request's slot, using
  the step's token-to-request map (`runner.req_indices`, the device tensor the runner built
  for this step: batch row of each token) gathered through a row -> slot table. Requests
  that did not opt in map to the spare "not counted" group. A step without opted-in
  requests does no per-request work at all.

Per-request sums live in fixed device accumulators `[slots + 1, layers * experts]` and leave
the worker only through `pop` (an RPC, between steps). Everything here is host bookkeeping
on the scheduler output plus a few device ops per step; nothing runs inside the forward.

A request opts in through `SamplingParams.extra_args[REQUEST_ROUTING_XARG]` = a key chosen by
the API server (from the request body's `vllm_xargs`). All engine requests with the same key
(the `n` samples of one request, the prompts of one batched completions request) add into
one summary.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch

from .counters import RoutingCounters
from .engine import REQUEST_ROUTING_XARG

logger = logging.getLogger("mofe_serve.step_routing")


def routing_key(sampling_params: Any) -> str | None:
    extra = getattr(sampling_params, "extra_args", None)
    key = extra.get(REQUEST_ROUTING_XARG) if isinstance(extra, dict) else None
    return key if isinstance(key, str) and key else None


class RequestRouting:
    """Per-request routing sums for the requests that opted in, keyed by routing key."""

    def __init__(self, counters: RoutingCounters, max_rows: int, num_slots: int):
        self.counters = counters
        self.num_slots = num_slots
        self.per_slot = counters.num_layers * counters.num_experts
        device = counters.step_ids.device
        rows = (num_slots + 1) * self.per_slot  # last slot: tokens not counted per request
        self.tokens = torch.zeros(rows, dtype=torch.int64, device=device)
        self.gate = torch.zeros(rows, dtype=torch.float64, device=device)
        # batch row -> slot, filled on the host each step that has opted-in requests.
        # Pageable on purpose: a non-blocking copy from pageable memory is staged at once
        # (no device sync), so the table can be refilled next step without a race.
        self.row_slot_host = torch.full((max_rows,), num_slots, dtype=torch.int64)
        self.row_slot = (self.row_slot_host if device.type == "cpu"
                         else self.row_slot_host.to(device))
        self.free = list(range(num_slots))
        self.key_slot: dict[str, int] = {}
        self.forwarded: dict[str, list[int]] = {}  # key -> [prompt, completion] tokens
        self.req_key: dict[str, str] = {}  # live engine request id -> key
        self.prompt_len: dict[str, int] = {}
        self.idle: OrderedDict[str, None] = OrderedDict()  # keys with no live request, oldest first
        self.unavailable: str | None = None  # why per-request sums cannot be kept here

    # --- host bookkeeping, before the step ------------------------------------------------
    def _open(self, key: str) -> None:
        if key in self.key_slot or key in self.forwarded:
            self.idle.pop(key, None)
            return
        if not self.free and self.idle:
            # Summaries nobody fetched (client gone): the oldest makes room.
            old, _ = self.idle.popitem(last=False)
            logger.warning("per-request routing: dropping unfetched summary %s", old)
            self._release(old)
        self.forwarded[key] = [0, 0]
        if self.free:
            self.key_slot[key] = self.free.pop()
        else:
            logger.warning("per-request routing: no free slot for %s (%d in use)", key,
                           self.num_slots)

    def before_step(self, scheduler_output) -> None:
        for req_id in scheduler_output.finished_req_ids:
            key = self.req_key.pop(req_id, None)
            self.prompt_len.pop(req_id, None)
            if key is not None and key not in self.req_key.values() and key in self.forwarded:
                self.idle[key] = None
        computed: dict[str, int] = {}
        for new in scheduler_output.scheduled_new_reqs:
            key = routing_key(new.sampling_params)
            if key is None:
                continue
            self._open(key)
            self.req_key[new.req_id] = key
            self.prompt_len[new.req_id] = (len(new.prompt_token_ids)
                                           if new.prompt_token_ids is not None
                                           else int(new.prompt_embeds.shape[0]))
            computed[new.req_id] = new.num_computed_tokens
        if not self.req_key:
            return
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            if req_id in self.req_key:
                computed[req_id] = cached.num_computed_tokens[i]
        for req_id, done in computed.items():
            scheduled = scheduler_output.num_scheduled_tokens.get(req_id, 0)
            prompt = max(0, min(self.prompt_len[req_id], done + scheduled) - done)
            counts = self.forwarded.get(self.req_key[req_id])
            if counts is not None:
                counts[0] += prompt
                counts[1] += scheduled - prompt

    # --- device work, after the forward ---------------------------------------------------
    def after_forward(self, runner, num_tokens: int) -> None:
        if not self.req_key or self.unavailable:
            return
        batch = runner.input_batch
        table = self.row_slot_host
        table.fill_(self.num_slots)
        tracked = False
        for req_id, key in self.req_key.items():
            slot, row = self.key_slot.get(key), batch.req_id_to_index.get(req_id)
            if slot is not None and row is not None:
                table[row] = slot
                tracked = True
        if not tracked:
            return
        token_rows = _token_rows(runner, num_tokens)
        if token_rows is None:
            self.unavailable = (f"{type(runner).__name__} has no per-step token-to-request "
                                "map (req_indices): per-request routing needs vLLM's V1 "
                                "model runner")
            logger.error("per-request routing off: %s", self.unavailable)
            return
        if self.row_slot is not table:
            self.row_slot.copy_(table, non_blocking=True)
        self.counters.aggregate(num_tokens, self.row_slot[token_rows], self.num_slots,
                                self.tokens, self.gate)

    # --- RPC, between steps ---------------------------------------------------------------
    def pop(self, keys: list[str]) -> dict[str, dict | None]:
        """Summaries for `keys` (None for a key this worker never saw or could not track),
        each removed from the worker."""
        shape = (self.counters.num_layers, self.counters.num_experts)
        out: dict[str, dict | None] = {}
        for key in keys:
            forwarded = self.forwarded.get(key)
            slot = self.key_slot.get(key)
            if self.unavailable:
                out[key] = {"error": self.unavailable}
            elif forwarded is None or slot is None:
                out[key] = None
            else:
                part = slice(slot * self.per_slot, (slot + 1) * self.per_slot)
                out[key] = {"tokens": self.tokens[part].view(shape).tolist(),
                            "gate_weight": self.gate[part].view(shape).tolist(),
                            "prompt_tokens": forwarded[0],
                            "completion_tokens": forwarded[1]}
            self._release(key)
        return out

    def _release(self, key: str) -> None:
        self.forwarded.pop(key, None)
        self.idle.pop(key, None)
        slot = self.key_slot.pop(key, None)
        if slot is not None:
            self.tokens[slot * self.per_slot:(slot + 1) * self.per_slot].zero_()
            self.gate[slot * self.per_slot:(slot + 1) * self.per_slot].zero_()
            self.free.append(slot)


def _token_rows(runner, num_tokens: int) -> torch.Tensor | None:
    """Batch row of each of the step's tokens: the device map the V1 runner built for this
    step (`req_indices`, filled in `_prepare_inputs`); None when the runner has none."""
    req_indices = getattr(getattr(runner, "req_indices", None), "gpu", None)
    if isinstance(req_indices, torch.Tensor) and req_indices.shape[0] >= num_tokens:
        return req_indices[:num_tokens]
    return None


class StepRouting:
    """The per-step hook on one model runner: totals always, per-request when asked."""

    def __init__(self, runner, counters: RoutingCounters):
        self.runner, self.counters = runner, counters
        max_rows = int(getattr(runner, "max_num_reqs", 0) or
                       runner.vllm_config.scheduler_config.max_num_seqs)
        self.requests = RequestRouting(counters, max_rows=max_rows,
                                       num_slots=2 * max_rows + 16)

    @classmethod
    def install(cls, runner, counters: RoutingCounters) -> StepRouting:
        """Wrap `runner.execute_model` once; returns the (existing) hook."""
        hook = getattr(runner, "_mofe_step_routing", None)
        if hook is None:
            hook = cls(runner, counters)
            inner = runner.execute_model

            def execute_model(scheduler_output, *args, **kwargs):
                hook.requests.before_step(scheduler_output)
                out = inner(scheduler_output, *args, **kwargs)
                hook.after_forward(scheduler_output)
                return out

            runner.execute_model = execute_model
            runner._mofe_step_routing = hook
        return hook

    def after_forward(self, scheduler_output) -> None:
        num_tokens = scheduler_output.total_num_scheduled_tokens
        # execute_model_state is set exactly when this call ran the model's forward (V1
        # runner: consumed by sample_tokens); early returns (no tokens, KV-transfer only)
        # leave it None and the buffer holds nothing of this step.
        if not num_tokens or getattr(self.runner, "execute_model_state", None) is None:
            return
        self.counters.end_step(num_tokens)
        self.requests.after_forward(self.runner, num_tokens)
