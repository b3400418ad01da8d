"""The device-side routing buffer on its own: per-layer record, per-step aggregation (totals
and per-group), masking of padding/stale rows, torch.compile, CUDA-graph capture/replay."""

from __future__ import annotations

import pytest
import torch

from mofe_serve.counters import RoutingCounters

TOPK_IDS = torch.tensor([[0, 2], [1, 2], [3, 0]], dtype=torch.int32)
TOPK_W = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])


def _counters(device="cpu", max_tokens=8) -> RoutingCounters:
    c = RoutingCounters(num_layers=2, num_experts=4, top_k=2, max_tokens=max_tokens).to(device)
    c.set_enabled(True)
    return c


def test_counts_are_gated_until_enabled():
    c = RoutingCounters(num_layers=2, num_experts=4, top_k=2, max_tokens=8)
    c.record(1, TOPK_IDS, TOPK_W)  # start-up / warm-up: not counted
    c.end_step(3)
    assert c.snapshot()["tokens"] == [[0] * 4, [0] * 4]
    c.set_enabled(True)
    c.record(0, TOPK_IDS, TOPK_W)
    c.record(1, TOPK_IDS, TOPK_W)
    c.end_step(3)
    snap = c.snapshot()
    assert snap["tokens"] == [[2, 1, 2, 1], [2, 1, 2, 1]]
    assert snap["gate_weight"][1] == pytest.approx([0.7, 0.5, 0.9, 0.9])


def test_padding_and_stale_rows_are_not_counted():
    c = _counters()
    big = torch.tensor([[3, 3]] * 6, dtype=torch.int32)
    for layer in (0, 1):  # an earlier, larger step leaves rows 3..5 behind
        c.record(layer, big, torch.ones(6, 2))
    c.reset()
    for layer in (0, 1):  # this step: 3 rows recorded (e.g. a padded graph batch) ...
        c.record(layer, TOPK_IDS, TOPK_W)
    c.end_step(2)  # ... of which the first 2 are real tokens
    assert c.snapshot()["tokens"] == [[1, 1, 2, 0], [1, 1, 2, 0]]


def test_aggregate_by_group_with_a_spare_group_for_untracked_rows():
    c = _counters()
    for layer in (0, 1):
        c.record(layer, TOPK_IDS, TOPK_W)
    # Token 0 -> group 1, token 1 -> not counted (index == num_groups), token 2 -> group 0.
    group = torch.tensor([1, 2, 0])
    tokens, gate = c.aggregate(3, group, num_groups=2)
    assert tokens.shape == (2, 2, 4)
    assert tokens[0].tolist() == [[1, 0, 0, 1]] * 2
    assert tokens[1].tolist() == [[1, 0, 1, 0]] * 2
    assert gate[0, 0].tolist() == pytest.approx([0.1, 0, 0, 0.9])
    # Running sums in caller-owned buffers: a second step adds up.
    acc_t = torch.zeros(3 * 8, dtype=torch.int64)
    acc_g = torch.zeros(3 * 8, dtype=torch.float64)
    for _ in range(2):
        tokens, _ = c.aggregate(3, group, 2, acc_t, acc_g)
    assert tokens[1, 1].tolist() == [2, 0, 2, 0]
    # Totals: every real token once per top-k choice, whatever the grouping.
    totals, _ = c.aggregate(3)
    assert totals.shape == (1, 2, 4) and int(totals.sum()) == 2 * 3 * 2
    with pytest.raises(ValueError, match="3 tokens"):
        c.aggregate(3, torch.tensor([0, 0]), 1)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        c.aggregate(9)


def test_record_views_follow_the_buffers_when_the_module_moves():
    c = _counters()
    c.record(0, TOPK_IDS, TOPK_W)  # caches views of the current buffers
    c._apply(lambda t: t.clone())  # what .to(device) does: new buffers
    c.record(0, TOPK_IDS, TOPK_W)
    c.record(1, TOPK_IDS, TOPK_W)
    c.end_step(3)
    assert c.snapshot()["tokens"][0] == [2, 1, 2, 1]


def test_update_under_torch_compile():
    c = _counters()

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(ids, w):
        c.record(0, ids, w)
        c.record(1, ids, w)
        return w * 2

    for _ in range(3):
        step(TOPK_IDS, TOPK_W)
        c.end_step(3)
    assert c.snapshot()["tokens"] == [[6, 3, 6, 3]] * 2


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device (none on this machine): the graph-capture "
                    "safety of record + aggregate is unverified here")
def test_record_and_aggregate_captured_in_cuda_graph_and_replayed():
    c = _counters("cuda")
    ids, w = TOPK_IDS.cuda(), TOPK_W.cuda()
    group = torch.tensor([0, 1, 2], device="cuda")  # token 2 untracked (spare group)
    acc_t = torch.zeros(3 * 8, dtype=torch.int64, device="cuda")
    acc_g = torch.zeros(3 * 8, dtype=torch.float64, device="cuda")

    def step():
        c.record(0, ids, w)
        c.record(1, ids, w)
        c.end_step(2)  # row 2 is padding for the totals
        c.aggregate(3, group, 2, acc_t, acc_g)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture, then reset
        step()
    torch.cuda.current_stream().wait_stream(stream)
    c.reset()
    acc_t.zero_()
    acc_g.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    assert c.snapshot()["tokens"][0] == [0, 0, 0, 0]  # capture does not execute
    for _ in range(4):
        graph.replay()
    ids.copy_(torch.tensor([[1, 1], [1, 1], [1, 1]], dtype=torch.int32))
    group.copy_(torch.tensor([1, 1, 1]))
    graph.replay()  # new routing and grouping in the same static buffers
    torch.cuda.synchronize()
    assert c.snapshot()["tokens"][0] == [4, 4 + 4, 8, 0]
    per_group = acc_t.view(3, 2, 4)
    assert per_group[0, 0].tolist() == [4, 0, 4, 0]
    assert per_group[1, 0].tolist() == [0, 4 + 6, 4, 0]
