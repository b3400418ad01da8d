"""OpenAI API conformance fixes on top of vLLM 0.32's server.

* `GET /v1/models/{model}` (the official client's `models.retrieve`): vLLM has only the
  list route. Answers the served name's card, or 404 in OpenAI's error shape.
* `echo=True, max_tokens=0` on `/v1/completions` ("score the prompt, generate nothing"):
  vLLM runs the request with max_tokens=1 (the engine cannot run zero decode steps), drops
  the sampled token from the text and logprobs, but counts it in `usage.completion_tokens`.
  `EchoOnlyCompletion` drops that token before vLLM builds the response, so usage says 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.outputs import RequestOutput

from .errors import error_response

router = APIRouter()


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request):
    cards = (await request.app.state.openai_serving_models.show_available_models()).data
    for card in cards:
        if card.id == model:
            return JSONResponse(card.model_dump())
    return error_response(f"The model `{model}` does not exist.", 404, "NotFoundError",
                          param="model")


def _echo_only(request) -> bool:
    return bool(request.echo) and request.max_tokens == 0


def _drop_generated(res: RequestOutput) -> RequestOutput:
    res.outputs = [dataclasses.replace(o, text="", token_ids=[],
                                       logprobs=None if o.logprobs is None else [])
                   for o in res.outputs]
    return res


class EchoOnlyCompletion(OpenAIServingCompletion):
    """vLLM's completion handler; for echo-only requests the one token vLLM had to sample
    is removed from the outputs (streaming and not) before usage is computed."""

    def request_output_to_completion_response(self, final_res_batch, request, *args,
                                              **kwargs):
        if _echo_only(request):
            final_res_batch = [_drop_generated(res) for res in final_res_batch]
        return super().request_output_to_completion_response(final_res_batch, request,
                                                             *args, **kwargs)

    def completion_stream_generator(self, request, engine_inputs, result_generator, *args,
                                    **kwargs):
        if _echo_only(request):
            result_generator = _dropping(result_generator)
        return super().completion_stream_generator(request, engine_inputs, result_generator,
                                                   *args, **kwargs)


async def _dropping(results: AsyncIterator[tuple[int, RequestOutput]]):
    async for prompt_idx, res in results:
        yield prompt_idx, _drop_generated(res)


def install_openai_compat(app: FastAPI) -> None:
    """Call after vLLM's `init_app_state` (which creates the completion handler); `router`
    is attached by `mofe_serve.app.build_mofe_app`."""
    serving = getattr(app.state, "openai_serving_completion", None)
    if serving is not None and type(serving) is OpenAIServingCompletion:
        # Same instance and state, one method pair overridden: vLLM builds the handler
        # inside init_app_state with many arguments we would otherwise have to mirror.
        serving.__class__ = EchoOnlyCompletion
