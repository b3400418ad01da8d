"""API-server side of a family engine: from a request's `model` to its variant index.

vLLM's OpenAI handlers all resolve the request's `model` through `_maybe_get_adapters`
(to find a LoRA adapter) before they build `SamplingParams` from the request. On a family
server that call also writes the variant index into the request's `vllm_xargs`, which vLLM
copies into `SamplingParams.extra_args`; the family worker reads it there
(mofe_serve.family_worker). The index always comes from `model`: a client's own
`vllm_xargs.mofe_variant` is overwritten, so a request cannot run one variant's weights
under another's name.

Two guards complete it:
- `engine_client.generate` refuses a request whose sampling parameters carry no valid
  index (a route that does not resolve `model` through the handlers above, e.g. beam search
  building its own parameters), instead of serving it with the wrong variant;
- the `model` field of each response is its variant's name (`NAME@VERSION`), where vLLM
  would write the first served name.
"""

from __future__ import annotations

import contextvars
import logging

from .engine import VARIANT_ARG
from .family import Family

logger = logging.getLogger("mofe_serve.family_serving")

# The display name of the variant the current request (asyncio task) asked for.
_REQUEST_VARIANT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mofe_request_variant", default=None)


class VariantNotSet(ValueError):
    """A request reached the engine without a variant index (a family server bug or an API
    route that does not name a model)."""


def request_variant_name() -> str | None:
    """NAME@VERSION of the variant the current request asked for (None outside one)."""
    return _REQUEST_VARIANT.get()


def _set_variant(request, family: Family) -> None:
    variant = family.variant_of(getattr(request, "model", None) or "")
    if variant is None:
        return  # vLLM's _check_model answers 404 for it
    if hasattr(request, "vllm_xargs"):
        request.vllm_xargs = {**(request.vllm_xargs or {}), VARIANT_ARG: variant}
    _REQUEST_VARIANT.set(family.display_names[variant])


def _wrap_adapter_lookup(serving, family: Family) -> None:
    lookup = serving._maybe_get_adapters

    def maybe_get_adapters(request, *args, **kwargs):
        _set_variant(request, family)
        return lookup(request, *args, **kwargs)

    serving._maybe_get_adapters = maybe_get_adapters


def _wrap_model_name(models) -> None:
    model_name = models.model_name

    def variant_model_name(lora_request=None):
        name = _REQUEST_VARIANT.get()
        return name if lora_request is None and name is not None else model_name(lora_request)

    models.model_name = variant_model_name


def _wrap_generate(engine_client, family: Family) -> None:
    generate = engine_client.generate
    num_variants = len(family.variants)

    def generate_checked(prompt, sampling_params, request_id, *args, **kwargs):
        variant = (getattr(sampling_params, "extra_args", None) or {}).get(VARIANT_ARG)
        if not (isinstance(variant, int) and 0 <= variant < num_variants):
            raise VariantNotSet(
                f"this server runs {num_variants} models ({', '.join(family.display_names)}); "
                "the request did not select one through its `model` field on a route that "
                "supports it (/v1/completions, /v1/chat/completions, /v1/responses)")
        return generate(prompt, sampling_params, request_id, *args, **kwargs)

    engine_client.generate = generate_checked


def install_family_serving(app, engine_client, family: Family) -> None:
    """Call after vLLM's `init_app_state` (which creates the handlers on `app.state`)."""
    handlers = 0
    for value in list(vars(app.state).get("_state", {}).values()):
        if callable(getattr(value, "_maybe_get_adapters", None)) and hasattr(value, "models"):
            _wrap_adapter_lookup(value, family)
            handlers += 1
    models = getattr(app.state, "openai_serving_models", None)
    if models is not None:
        _wrap_model_name(models)
    _wrap_generate(engine_client, family)
    logger.info("serving %d variants from one engine: %s (%d request handlers map `model` "
                "to a variant)", len(family.variants), ", ".join(family.display_names),
                handlers)
