"""Worker extension (`--worker-extension-cls`): routing-counter RPCs for the API server.

Called through `collective_rpc(RoutingRpc.*)` (names in engine.py, which also names this
class for vLLM); the engine core runs them between steps, so they never interleave with a
forward pass.
"""

from __future__ import annotations


class RoutingWorkerExtension:
    def _mofe_counters(self):
        model = self.model_runner.get_model()
        counters = getattr(model, "mofe_counters", None)
        if counters is None:
            raise RuntimeError(f"{type(model).__name__} has no MoFE routing counters "
                               "(serve it as MoFEMixtralForCausalLM)")
        return counters

    def mofe_routing_snapshot(self) -> dict:
        return self._mofe_counters().snapshot()

    def mofe_routing_enable(self, on: bool = True) -> bool:
        self._mofe_counters().set_enabled(on)
        return on

    def mofe_routing_reset(self) -> bool:
        self._mofe_counters().reset()
        return True
