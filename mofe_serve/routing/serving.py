"""Logic behind the routing API: window counts, domain shares, reset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .poller import RoutingPoller
from .protocol import RoutingListResponse, RoutingResetResponse, RoutingResponse
from .state import RoutingSnapshot, RoutingState, VariantRoutingStates


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


class UnknownModel(LookupError):
    """`?model=` names no model this server runs."""


@dataclass
class RoutedModel:
    """One model whose routing the server reports: its display name (NAME@VERSION), every
    name it is served under, its expert domains and its routing state."""

    name: str
    names: list[str]
    domains: list[str]
    state: RoutingState


class ServingRouting:
    """The routing API over one model, or over every variant of a family engine (`models`,
    in the engine's variant order, with `states` the poller's VariantRoutingStates)."""

    def __init__(self, model: str, domains: Sequence[str], state: RoutingState,
                 poller: RoutingPoller, names: Sequence[str] = (),
                 models: Sequence[RoutedModel] = (), states: VariantRoutingStates | None = None):
        self.models = list(models) or [RoutedModel(model, list(names) or [model],
                                                   list(domains), state)]
        self.model, self.domains, self.state = model, list(domains), state
        self.poller, self.states = poller, states

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

    def _find(self, model: str) -> int:
        for index, routed in enumerate(self.models):
            if model in routed.names:
                return index
        served = ", ".join(m.name for m in self.models)
        raise UnknownModel(f"The model `{model}` does not exist. Routing is kept for: "
                           f"{served}.")

    def _response(self, routed: RoutedModel) -> RoutingResponse:
        snap = routed.state.snapshot()
        if snap is None:
            raise RoutingNotReady("routing counters have not been read from the engine yet")
        return RoutingResponse(
            model=routed.name, num_layers=snap.num_layers, num_experts=snap.num_experts,
            top_k=snap.top_k, tokens=snap.window_tokens, gate_weight=snap.window_gate_weight,
            domains=domain_shares(snap.window_tokens, routed.domains), since=snap.since,
            updated_at=snap.taken_at)

    def get(self, model: str | None = None) -> RoutingResponse | RoutingListResponse:
        """The window of `model` (any of its served names); without one, the only model's,
        or a list with every variant's when the engine serves a family."""
        if model is not None:
            index = self._find(model)
        self._check_engine()  # the cached counts would be stale, not the window's
        if model is not None:
            return self._response(self.models[index])
        if len(self.models) == 1:
            return self._response(self.models[0])
        return RoutingListResponse(data=[self._response(m) for m in self.models])

    async def reset(self, model: str | None = None) -> RoutingResetResponse:
        """Start a new window for `model`, or for every model when None."""
        indices = [self._find(model)] if model is not None else list(range(len(self.models)))
        self._check_engine()
        # A fresh read (not the cache), so the new window starts exactly now.
        try:
            worker_snapshot, _ = await self.poller.read_worker()
        except Exception as exc:  # engine died or did not answer within the RPC timeout
            raise RoutingUnavailable(f"could not read routing counts from the engine: "
                                     f"{type(exc).__name__}: {exc}") from exc
        if self.states is not None:
            self.states.reset_window(worker_snapshot, variants=indices)
        else:
            self.state.reset_window(worker_snapshot)
        first = self.models[indices[0]]
        return RoutingResetResponse(model=first.name,
                                    models=[self.models[i].name for i in indices],
                                    since=first.state.snapshot().since)
