"""API-server side of per-request routing summaries: fetching them from the worker and
shaping the `mofe_routing` object (no torch, no vLLM).

The worker keeps each opted-in request's sums under a routing key (step_routing.py) until
`RoutingRpc.REQUESTS` pops them. `SummaryFetcher` coalesces pops: every key asked for while
one RPC is in flight goes out in the next one, so a burst of finishing requests costs one
RPC, and each waits at most about one engine step (the engine core answers RPCs between
steps). Keys of requests that ended without a summary (client gone, error) are released
the same way, so the worker never holds them for long.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

from ..engine import RoutingRpc
from .serving import domain_shares

logger = logging.getLogger("mofe_serve.routing")


def summarize(raw: dict | None, domains: Sequence[str]) -> dict:
    """The response's `mofe_routing` object from one worker summary."""
    if raw is None:
        return {"error": "no routing summary for this request: the worker could not track "
                "it (see the server log)"}
    if "error" in raw:
        return {"error": raw["error"]}
    return {"tokens": raw["tokens"], "gate_weight": raw["gate_weight"],
            "domains": domain_shares(raw["tokens"], domains),
            "prompt_tokens": raw["prompt_tokens"],
            "completion_tokens": raw["completion_tokens"]}


class SummaryFetcher:
    def __init__(self, engine_client, domains: Sequence[str],
                 on_summary: Callable[[dict], None] | None = None,
                 rpc_timeout_s: float = 60.0):
        self.engine_client, self.domains = engine_client, list(domains)
        self.on_summary, self.rpc_timeout_s = on_summary, rpc_timeout_s
        self.access_log = False  # --routing-access-log (routing/access_log.py)
        self._wanted: dict[str, asyncio.Future] = {}
        self._released: set[str] = set()
        self._task: asyncio.Task | None = None

    @staticmethod
    def new_key() -> str:
        return uuid.uuid4().hex

    async def summary(self, key: str) -> dict:
        """The `mofe_routing` object of a finished request (pops it from the worker)."""
        future = asyncio.get_running_loop().create_future()
        self._wanted[key] = future
        self._kick()
        raw = await future
        summary = summarize(raw, self.domains)
        if "tokens" in summary and self.on_summary is not None:
            self.on_summary(summary)
        return summary

    def release(self, key: str) -> None:
        """Drop a key whose summary nobody will ask for."""
        self._released.add(key)
        self._kick()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(),
                                                                name="mofe-request-routing")

    async def _drain(self) -> None:
        while self._wanted or self._released:
            wanted, self._wanted = self._wanted, {}
            keys = list(wanted) + [k for k in self._released if k not in wanted]
            self._released = set()
            try:
                results = await self.engine_client.collective_rpc(
                    RoutingRpc.REQUESTS, timeout=self.rpc_timeout_s, args=(keys,))
                by_key = results[0]
            except Exception as exc:  # engine dead or stuck: the requests still complete
                logger.warning("per-request routing read failed: %s", exc)
                failed = {"error": f"routing summary could not be read from the engine: "
                                   f"{type(exc).__name__}: {exc}"}
                for future in wanted.values():
                    if not future.done():
                        future.set_result(failed)
                continue
            for key, future in wanted.items():
                if not future.done():
                    future.set_result(by_key.get(key))
