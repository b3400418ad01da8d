"""Background task that copies worker routing counts into the API server's cache.

`collective_rpc` is served by the engine core between steps, so one call can wait behind a
long prefill; it runs here, on its own task, never on an inference request's path.
Staleness bound: a snapshot is at most `interval_s` + one engine step (+ RPC round trip)
old; `RoutingSnapshot.taken_at` says when its RPC was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .state import RoutingState

logger = logging.getLogger("mofe_serve.routing")
SNAPSHOT_RPC = "mofe_routing_snapshot"
ENABLE_RPC = "mofe_routing_enable"


class RoutingPoller:
    def __init__(self, engine_client, state: RoutingState, interval_s: float = 1.0,
                 rpc_timeout_s: float = 60.0):
        self.engine_client, self.state = engine_client, state
        self.interval_s, self.rpc_timeout_s = interval_s, rpc_timeout_s
        self._task: asyncio.Task | None = None

    async def read_worker(self) -> tuple[dict, float]:
        """One fresh read of the worker counters (rank 0: every TP rank counts the same)."""
        sent_at = time.time()
        results = await self.engine_client.collective_rpc(SNAPSHOT_RPC,
                                                          timeout=self.rpc_timeout_s)
        return results[0], sent_at

    async def start(self) -> None:
        """Enable counting (start-up and warm-up runs are over) and start polling."""
        await self.engine_client.collective_rpc(ENABLE_RPC, timeout=self.rpc_timeout_s,
                                                args=(True,))
        snapshot, sent_at = await self.read_worker()
        self.state.reset_window(snapshot)
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="mofe-routing-poller")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                snapshot, sent_at = await self.read_worker()
                self.state.update(snapshot, taken_at=sent_at)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # engine busy/dying: keep serving the last counts
                logger.warning("routing counters poll failed: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
