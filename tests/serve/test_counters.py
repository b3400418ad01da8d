"""The device-side counter update on its own: masking, torch.compile, CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch

from mofe_serve.counters import RoutingCounters

TOPK_IDS = torch.tensor([[0, 2], [1, 2], [3, 0]], dtype=torch.int32)
TOPK_W = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])


def _counters(device="cpu") -> RoutingCounters:
    c = RoutingCounters(num_layers=2, num_experts=4, top_k=2).to(device)
    c.set_enabled(True)
    return c


def test_counts_are_gated_until_enabled():
    c = RoutingCounters(num_layers=2, num_experts=4, top_k=2)
    c.record(1, TOPK_IDS, TOPK_W)  # start-up / warm-up: not counted
    assert c.snapshot()["tokens"] == [[0] * 4, [0] * 4]
    c.set_enabled(True)
    c.record(1, TOPK_IDS, TOPK_W)
    snap = c.snapshot()
    assert snap["tokens"] == [[0] * 4, [2, 1, 2, 1]]
    assert snap["gate_weight"][1] == pytest.approx([0.7, 0.5, 0.9, 0.9])


def test_padding_rows_from_forward_context_are_masked():
    from vllm.forward_context import ForwardContext, override_forward_context

    c = _counters()
    ctx = ForwardContext(no_compile_layers={}, attn_metadata={}, slot_mapping={},
                         is_padding=torch.tensor([False, False, True]))
    with override_forward_context(ctx):
        c.record(0, TOPK_IDS, TOPK_W)
    assert c.snapshot()["tokens"][0] == [1, 1, 2, 0]  # row 2 (experts 3, 0) is padding


def test_update_under_torch_compile():
    c = _counters()

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(ids, w):
        c.record(0, ids, w)
        return w * 2

    for _ in range(3):
        step(TOPK_IDS, TOPK_W)
    assert c.snapshot()["tokens"][0] == [6, 3, 6, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_update_captured_in_cuda_graph_and_replayed():
    c = _counters("cuda")
    ids, w = TOPK_IDS.cuda(), TOPK_W.cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture, then reset
        c.record(0, ids, w)
    torch.cuda.current_stream().wait_stream(stream)
    c.reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        c.record(0, ids, w)
    torch.cuda.synchronize()
    assert c.snapshot()["tokens"][0] == [0, 0, 0, 0]  # capture does not execute
    for _ in range(4):
        graph.replay()
    ids.copy_(torch.tensor([[1, 1], [1, 1], [1, 1]], dtype=torch.int32))
    graph.replay()  # new routing in the same static input buffer
    torch.cuda.synchronize()
    assert c.snapshot()["tokens"][0] == [8, 4 + 6, 8, 4]
    c.set_enabled(False)
    graph.replay()
    torch.cuda.synchronize()
    assert c.snapshot()["tokens"][0] == [8, 10, 8, 4]
