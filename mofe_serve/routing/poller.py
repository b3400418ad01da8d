"""Background task that copies worker routing counts into the API server's cache.

`collective_rpc` is served by the engine core between steps, so one call can wait behind a
long prefill; it runs here, on its own task, never on an inference request's path.
Staleness bound: a snapshot is at most `interval_s` + one engine step (+ RPC round trip)
old; `RoutingSnapshot.taken_at` says when its RPC was sent.

Idle servers are not polled: vLLM's CPU worker busy-spins for 1 s after every message it
reads (shm_broadcast's SpinCondition), so a read every second would keep one core at 100%
on an idle server. The poller reads only while the engine has unfinished requests, once
after it drains, and after any HTTP request (`note_activity`, from an ASGI middleware);
otherwise the counts cannot have changed. A heartbeat read every `idle_poll_s` bounds
`taken_at`'s age on an idle server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..engine import RoutingRpc
from .state import RoutingState

logger = logging.getLogger("mofe_serve.routing")


class RoutingPoller:
    def __init__(self, engine_client, state: RoutingState, interval_s: float = 1.0,
                 rpc_timeout_s: float = 60.0, idle_poll_s: float = 30.0):
        self.engine_client, self.state = engine_client, state
        self.interval_s, self.rpc_timeout_s = interval_s, rpc_timeout_s
        self.idle_poll_s = max(idle_poll_s, interval_s)
        self.activity = 0  # bumped at the start and end of every HTTP request
        self._task: asyncio.Task | None = None

    def note_activity(self) -> None:
        self.activity += 1

    def _engine_busy(self) -> bool:
        unfinished = getattr(self.engine_client, "get_num_unfinished_requests", None)
        return True if unfinished is None else unfinished() > 0

    async def read_worker(self) -> tuple[dict, float]:
        """One fresh read of the worker counters (rank 0: every TP rank counts the same)."""
        sent_at = time.time()
        results = await self.engine_client.collective_rpc(RoutingRpc.SNAPSHOT,
                                                          timeout=self.rpc_timeout_s)
        return results[0], sent_at

    async def start(self) -> None:
        """Enable counting (start-up and warm-up runs are over) and start polling."""
        await self.engine_client.collective_rpc(RoutingRpc.ENABLE, timeout=self.rpc_timeout_s,
                                                args=(True,))
        snapshot, sent_at = await self.read_worker()
        self.state.reset_window(snapshot)
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="mofe-routing-poller")

    async def _run(self) -> None:
        seen, was_busy, last_read = self.activity, False, time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            busy = self._engine_busy()
            if (self.activity == seen and not busy and not was_busy
                    and time.monotonic() - last_read < self.idle_poll_s):
                continue  # idle since the last read: counts cannot have changed
            seen, was_busy, last_read = self.activity, busy, time.monotonic()
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
