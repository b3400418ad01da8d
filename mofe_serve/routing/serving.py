"""Logic behind the routing API: window counts, domain shares, reset."""

from __future__ import annotations

from collections.abc import Sequence

from .poller import RoutingPoller
from .protocol import RoutingResetResponse, RoutingResponse
from .state import RoutingSnapshot, RoutingState


class RoutingNotReady(RuntimeError):
    pass


class RoutingUnavailable(RuntimeError):
    """The engine is dead (or did not answer): counts cannot be read or reset."""


def domain_shares(window_tokens: list[list[int]], domains: Sequence[str]) -> dict[str, float]:
    """Share of all routed slots (every layer, every top-k choice) that went to each domain."""
    names = [domains[e] if e < len(domains) else "unknown" for e in range(len(window_tokens[0]))]
    per_domain = dict.fromkeys(names, 0)
    for layer in window_tokens:
        for expert, count in enumerate(layer):
            per_domain[names[expert]] += count
    total = sum(per_domain.values())
    return {d: (c / total if total else 0.0) for d, c in per_domain.items()}


class ServingRouting:
    def __init__(self, model: str, domains: Sequence[str], state: RoutingState,
                 poller: RoutingPoller):
        self.model, self.domains, self.state, self.poller = model, list(domains), state, poller

    def snapshot(self) -> RoutingSnapshot | None:
        return self.state.snapshot()

    def engine_dead(self) -> bool:
        # vLLM's AsyncLLM.errored: engine core process gone or its output handler stopped.
        return bool(getattr(self.poller.engine_client, "errored", False))

    def _check_engine(self) -> None:
        if self.engine_dead():
            snap = self.state.snapshot()
            last = f" (last read at unix time {snap.taken_at:.3f})" if snap else ""
            raise RoutingUnavailable("the engine is dead: routing counts can no longer be "
                                     f"read{last}")

    def get(self) -> RoutingResponse:
        self._check_engine()  # the cached counts would be stale, not the window's
        snap = self.state.snapshot()
        if snap is None:
            raise RoutingNotReady("routing counters have not been read from the engine yet")
        return RoutingResponse(
            model=self.model, num_layers=snap.num_layers, num_experts=snap.num_experts,
            top_k=snap.top_k, tokens=snap.window_tokens, gate_weight=snap.window_gate_weight,
            domains=domain_shares(snap.window_tokens, self.domains), since=snap.since,
            updated_at=snap.taken_at)

    async def reset(self) -> RoutingResetResponse:
        self._check_engine()
        # A fresh read (not the cache), so the new window starts exactly now.
        try:
            worker_snapshot, _ = await self.poller.read_worker()
        except Exception as exc:  # engine died or did not answer within the RPC timeout
            raise RoutingUnavailable(f"could not read routing counts from the engine: "
                                     f"{type(exc).__name__}: {exc}") from exc
        self.state.reset_window(worker_snapshot)
        snap = self.state.snapshot()
        return RoutingResetResponse(model=self.model, since=snap.since)
