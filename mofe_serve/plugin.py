"""vLLM general plugin: registers the MoFE Mixtral architecture in every vLLM process.

Declared in pyproject.toml under `vllm.general_plugins`, so vLLM calls `register()` in the
API server, the engine core and each worker. It only records an import string: nothing
heavy is imported here.

Selecting the architecture:
- `mofe serve` / `mofe batch` pass the `hf_overrides` of `engine.counting_engine_kwargs()`.
- With vLLM's own server module, pass the same `--hf-overrides`, or set
  `MOFE_OVERRIDE_MIXTRAL=1` so every `MixtralForCausalLM` checkpoint loads our class.
"""

from __future__ import annotations

import os

from .engine import ARCHITECTURE, FAMILY_ARCHITECTURE, FAMILY_MODEL_CLASS, MODEL_CLASS

OVERRIDE_ENV = "MOFE_OVERRIDE_MIXTRAL"


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    if FAMILY_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(FAMILY_ARCHITECTURE, FAMILY_MODEL_CLASS)
    if os.environ.get(OVERRIDE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        # Replaces vLLM's own Mixtral entry for this process (vLLM logs a warning).
        ModelRegistry.register_model("MixtralForCausalLM", MODEL_CLASS)
