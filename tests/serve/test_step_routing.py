"""The worker's per-step hook on its own: totals, per-request sums by routing key (n > 1
siblings share one), prompt/completion split, slots freed on pop and reused.

vLLM's own scheduler-output dataclasses and SamplingParams are used; the model runner is a
stand-in exposing what the hook reads from vLLM's V1 runner (`execute_model`,
`execute_model_state`, `input_batch.req_id_to_index`, `req_indices.gpu`, `max_num_reqs`):
the real runner is covered by the server tests (test_request_routing.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from vllm import SamplingParams
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput

from mofe_serve.counters import RoutingCounters
from mofe_serve.engine import REQUEST_ROUTING_XARG
from mofe_serve.step_routing import RequestRouting, StepRouting

LAYERS, EXPERTS, TOP_K = 2, 4, 2


def _new(req_id: str, prompt: int, key: str | None) -> NewRequestData:
    params = SamplingParams(max_tokens=4,
                            extra_args={REQUEST_ROUTING_XARG: key} if key else None)
    return NewRequestData(req_id=req_id, prompt_token_ids=list(range(prompt)), mm_features=[],
                          sampling_params=params, pooling_params=None, block_ids=([],),
                          num_computed_tokens=0, lora_request=None)


def _output(new, cached: dict[str, int], scheduled: dict[str, int], finished=()):
    cached_data = CachedRequestData(
        req_ids=list(cached), resumed_req_ids=set(), new_token_ids=[], all_token_ids={},
        new_block_ids=[None] * len(cached), num_computed_tokens=list(cached.values()),
        num_output_tokens=[1] * len(cached))
    return SchedulerOutput(
        scheduled_new_reqs=new, scheduled_cached_reqs=cached_data,
        num_scheduled_tokens=scheduled, total_num_scheduled_tokens=sum(scheduled.values()),
        scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={},
        finished_req_ids=set(finished), free_encoder_mm_hashes=[])


class Runner:
    """Runs a 'forward' that records expert (row of the request in the batch) % EXPERTS and
    expert + 1 for every token, in every layer."""

    def __init__(self, counters: RoutingCounters):
        self.counters, self.max_num_reqs = counters, 8
        self.input_batch = SimpleNamespace(req_id_to_index={})
        self.req_indices = SimpleNamespace(gpu=torch.zeros(16, dtype=torch.int64))
        self.execute_model_state = None

    def execute_model(self, out: SchedulerOutput, intermediate_tensors=None):
        order = [r for r in self.input_batch.req_id_to_index if r in out.num_scheduled_tokens]
        self.input_batch.req_id_to_index = {r: i for i, r in enumerate(order)}
        rows = [i for i, r in enumerate(order) for _ in range(out.num_scheduled_tokens[r])]
        if self.req_indices is not None:
            self.req_indices.gpu[:len(rows)] = torch.tensor(rows)
        ids = torch.tensor([[r % EXPERTS, (r + 1) % EXPERTS] for r in rows], dtype=torch.int32)
        for layer in range(LAYERS):
            self.counters.record(layer, ids, torch.full((len(rows), TOP_K), 0.5))
        self.execute_model_state = "ran" if rows else None

    def schedule(self, order: list[str]) -> None:
        self.input_batch.req_id_to_index = {r: i for i, r in enumerate(order)}


def _installed():
    """Counters enabled, a stand-in runner, and the step hook installed on it."""
    counters = RoutingCounters(LAYERS, EXPERTS, TOP_K, max_tokens=16)
    counters.set_enabled(True)
    runner = Runner(counters)
    return counters, runner, StepRouting.install(runner, counters)


def test_totals_and_per_request_sums_by_key():
    counters, runner, hook = _installed()
    assert StepRouting.install(runner, counters) is hook  # installed once

    # Prefill: a (key k, prompt 3), b (not opted in, prompt 2), c (key k: a's sibling, 3).
    runner.schedule(["a", "b", "c"])
    runner.execute_model(_output([_new("a", 3, "k"), _new("b", 2, None), _new("c", 3, "k")],
                                 {}, {"a": 3, "b": 2, "c": 3}))
    # Decode: one token each; then a and c finish (the step after tells the worker).
    runner.execute_model(_output([], {"a": 3, "b": 2, "c": 3}, {"a": 1, "b": 1, "c": 1}))
    runner.execute_model(_output([], {"b": 3}, {"b": 1}, finished={"a", "c"}))

    summary = hook.requests.pop(["k"])["k"]
    # Rows 0 (a) and 2 (c) route to experts {0, 1} and {2, 3}: 4 tokens each per layer.
    assert summary["tokens"] == [[4, 4, 4, 4]] * LAYERS
    assert summary["gate_weight"] == [[2.0] * 4] * LAYERS
    assert summary["prompt_tokens"] == 6 and summary["completion_tokens"] == 2
    assert sum(summary["tokens"][0]) == TOP_K * (6 + 2)
    totals = counters.snapshot()["tokens"]
    assert [sum(layer) for layer in totals] == [TOP_K * (8 + 3 + 1)] * LAYERS
    assert hook.requests.pop(["k"]) == {"k": None}  # popped: gone from the worker
    assert hook.requests.free and not hook.requests.key_slot
    slots = hook.requests.num_slots * LAYERS * EXPERTS  # the rest: the "not counted" group
    assert int(hook.requests.tokens[:slots].sum()) == 0  # slot zeroed for reuse


def test_steps_without_opted_in_requests_do_no_per_request_work():
    counters, runner, hook = _installed()
    runner.schedule(["x"])
    runner.execute_model(_output([_new("x", 4, None)], {}, {"x": 4}))
    assert int(hook.requests.tokens.sum()) == 0 and not hook.requests.req_key  # not touched
    assert sum(counters.snapshot()["tokens"][0]) == TOP_K * 4


def test_unfetched_summaries_make_room_oldest_first():
    counters = RoutingCounters(LAYERS, EXPERTS, TOP_K, max_tokens=16)
    routing = RequestRouting(counters, max_rows=4, num_slots=1)
    routing.before_step(_output([_new("a", 2, "old")], {}, {"a": 2}))
    routing.before_step(_output([], {}, {}, finished={"a"}))  # finished, never fetched
    routing.before_step(_output([_new("b", 2, "new")], {}, {"b": 2}))
    assert list(routing.key_slot) == ["new"]
    assert routing.pop(["old"]) == {"old": None}


def test_a_runner_without_a_token_map_keeps_totals_and_says_why():
    counters, runner, hook = _installed()
    runner.schedule(["a"])
    runner.req_indices = None  # e.g. a runner other than vLLM's V1 runner
    runner.execute_model(_output([_new("a", 3, "k")], {}, {"a": 3}))
    assert sum(counters.snapshot()["tokens"][0]) == TOP_K * 3
    assert "req_indices" in hook.requests.pop(["k"])["k"]["error"]


def test_after_step_callback_groups_tokens_by_any_row_table():
    """How a per-variant (or any per-request) grouping plugs in: a row -> group table
    gathered through the step's token map, aggregated into caller-owned sums."""
    from mofe_serve.step_routing import token_rows

    counters, runner, hook = _installed()
    groups = 2
    sums = torch.zeros((groups + 1) * LAYERS * EXPERTS, dtype=torch.int64)
    gates = torch.zeros_like(sums, dtype=torch.float64)

    def by_variant(runner, scheduler_output, num_tokens):
        variant = {"a": 0, "b": 1, "c": 0}  # e.g. from each request's extra_args
        table = torch.full((runner.max_num_reqs,), groups, dtype=torch.int64)
        for req_id, row in runner.input_batch.req_id_to_index.items():
            table[row] = variant[req_id]
        counters.aggregate(num_tokens, table[token_rows(runner, num_tokens)], groups, sums,
                           gates)

    hook.after_step.append(by_variant)
    runner.schedule(["a", "b", "c"])
    runner.execute_model(_output([_new("a", 3, None), _new("b", 2, None), _new("c", 1, None)],
                                 {}, {"a": 3, "b": 2, "c": 1}))
    per_variant = sums.view(groups + 1, LAYERS, EXPERTS)
    assert per_variant[0, 0].tolist() == [3, 3, 1, 1]  # a (row 0) 3 tokens, c (row 2) 1
    assert per_variant[1, 0].tolist() == [0, 2, 2, 0]  # b (row 1)
