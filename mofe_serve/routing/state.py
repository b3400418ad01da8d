"""API-server-side routing state: cumulative counts polled from the worker, and a window.

The worker's device counters only ever grow (Prometheus counters must be monotonic). A
"window" (what `GET /v1/routing` and the per-layer gauges describe) is the cumulative count
minus an offset captured at the last `POST /v1/routing/reset`. No torch, no vLLM here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

Matrix = list[list[float]]


def _minus(a: Matrix, b: Matrix) -> Matrix:
    return [[x - y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]


@dataclass(frozen=True)
class RoutingSnapshot:
    """Counts as of `taken_at`: cumulative since start-up and over the current window."""

    num_layers: int
    num_experts: int
    top_k: int
    tokens: list[list[int]]  # cumulative [layer][expert]
    gate_weight: Matrix  # cumulative [layer][expert]
    window_tokens: list[list[int]]
    window_gate_weight: Matrix
    since: float  # unix time the window started
    taken_at: float  # unix time the worker counts were read


@dataclass
class RoutingState:
    """Thread-safe holder of the latest worker counts and the window offset."""

    num_layers: int
    num_experts: int
    top_k: int
    _tokens: list[list[int]] | None = None
    _gate: Matrix | None = None
    _offset_tokens: list[list[int]] | None = None
    _offset_gate: Matrix | None = None
    _since: float = field(default_factory=time.time)
    _taken_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, worker_snapshot: dict, taken_at: float | None = None) -> None:
        """Store counts read from the worker (`RoutingCounters.snapshot()`)."""
        with self._lock:
            self._tokens = [list(map(int, r)) for r in worker_snapshot["tokens"]]
            self._gate = [list(map(float, r)) for r in worker_snapshot["gate_weight"]]
            self._taken_at = time.time() if taken_at is None else taken_at
            if self._offset_tokens is None:
                self._offset_tokens = [[0] * self.num_experts for _ in range(self.num_layers)]
                self._offset_gate = [[0.0] * self.num_experts for _ in range(self.num_layers)]

    def reset_window(self, worker_snapshot: dict) -> None:
        """Start a new window at the given (freshly read) cumulative counts."""
        self.update(worker_snapshot)
        with self._lock:
            self._offset_tokens = [r[:] for r in self._tokens]
            self._offset_gate = [r[:] for r in self._gate]
            self._since = self._taken_at

    def snapshot(self) -> RoutingSnapshot | None:
        with self._lock:
            if self._tokens is None:
                return None
            return RoutingSnapshot(
                num_layers=self.num_layers, num_experts=self.num_experts, top_k=self.top_k,
                tokens=[r[:] for r in self._tokens], gate_weight=[r[:] for r in self._gate],
                window_tokens=_minus(self._tokens, self._offset_tokens),
                window_gate_weight=_minus(self._gate, self._offset_gate),
                since=self._since, taken_at=self._taken_at)


class VariantRoutingStates:
    """A family engine's routing state: one `RoutingState` per variant (index = the engine's
    variant index), all fed from one worker snapshot (its `variants` list). Offers the two
    methods the poller calls, so the poller does not know how many models there are."""

    def __init__(self, num_variants: int, num_layers: int, num_experts: int, top_k: int):
        self.states = [RoutingState(num_layers, num_experts, top_k)
                       for _ in range(num_variants)]

    def _parts(self, worker_snapshot: dict) -> list[dict]:
        variants = worker_snapshot.get("variants") or []
        if len(variants) != len(self.states):
            raise ValueError(f"worker snapshot has {len(variants)} variants, this server "
                             f"serves {len(self.states)}")
        return [{**worker_snapshot, **part} for part in variants]

    def update(self, worker_snapshot: dict, taken_at: float | None = None) -> None:
        for state, part in zip(self.states, self._parts(worker_snapshot), strict=True):
            state.update(part, taken_at)

    def reset_window(self, worker_snapshot: dict, variants: list[int] | None = None) -> None:
        for index, (state, part) in enumerate(zip(self.states, self._parts(worker_snapshot),
                                                  strict=True)):
            if variants is None or index in variants:
                state.reset_window(part)
            else:
                state.update(part)
