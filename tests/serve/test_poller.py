"""The routing poller leaves an idle engine alone and catches up after every request.

A stand-in engine client counts RPCs (the real engine is covered by the server tests);
what is tested here is only the poller's when-to-read rule.
"""

from __future__ import annotations

import asyncio

from mofe_serve.engine import RoutingRpc
from mofe_serve.routing.poller import RoutingPoller
from mofe_serve.routing.state import RoutingState


class CountingEngine:
    def __init__(self):
        self.unfinished = 0
        self.reads = 0

    def get_num_unfinished_requests(self) -> int:
        return self.unfinished

    async def collective_rpc(self, method, timeout=None, args=()):
        if method == RoutingRpc.SNAPSHOT:
            self.reads += 1
        return [{"num_layers": 1, "num_experts": 2, "top_k": 1, "enabled": True,
                 "tokens": [[self.reads, 0]], "gate_weight": [[float(self.reads), 0.0]]}]


def test_idle_engine_is_not_polled_and_activity_is_caught_up():
    async def scenario():
        engine = CountingEngine()
        poller = RoutingPoller(engine, RoutingState(1, 2, 1), interval_s=0.01,
                               idle_poll_s=60)
        await poller.start()
        start_reads = engine.reads
        await asyncio.sleep(0.2)  # ~20 intervals with nothing happening
        idle_reads = engine.reads - start_reads

        poller.note_activity()  # a request arrives...
        engine.unfinished = 1
        await asyncio.sleep(0.1)
        busy_reads = engine.reads - start_reads - idle_reads
        engine.unfinished = 0  # ...and finishes
        poller.note_activity()
        await asyncio.sleep(0.1)
        after_drain = engine.reads
        await asyncio.sleep(0.2)
        settled = engine.reads - after_drain
        await poller.stop()
        return idle_reads, busy_reads, settled

    idle_reads, busy_reads, settled = asyncio.run(scenario())
    assert idle_reads == 0
    assert busy_reads >= 3  # read every interval while requests run
    assert settled == 0  # back to idle once the final counts were read


def test_heartbeat_bounds_snapshot_age_when_idle():
    async def scenario():
        engine = CountingEngine()
        poller = RoutingPoller(engine, RoutingState(1, 2, 1), interval_s=0.01,
                               idle_poll_s=0.05)
        await poller.start()
        before = engine.reads
        await asyncio.sleep(0.3)
        await poller.stop()
        return engine.reads - before

    assert asyncio.run(scenario()) >= 2
