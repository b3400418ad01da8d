"""Worker extension (`--worker-extension-cls`): routing RPCs for the API server.

Called through `collective_rpc(RoutingRpc.*)` (names in engine.py, which also names this
class for vLLM); the engine core runs them between steps, so they never interleave with a
forward pass. Enabling counting also installs the per-step aggregation hook on the model
runner (step_routing.py): vLLM's start-up, profiling and warm-up runs are over by then.
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

    def _mofe_step_routing(self):
        from .step_routing import StepRouting

        return StepRouting.install(self.model_runner, self._mofe_counters())

    def mofe_routing_snapshot(self) -> dict:
        return self._mofe_counters().snapshot()

    def mofe_routing_enable(self, on: bool = True) -> bool:
        self._mofe_step_routing()
        self._mofe_counters().set_enabled(on)
        return on

    def mofe_routing_reset(self) -> bool:
        self._mofe_counters().reset()
        return True

    def mofe_request_routing(self, keys: list[str]) -> dict:
        """Per-request summaries for these routing keys, removed from the worker."""
        return self._mofe_step_routing().requests.pop(list(keys))
