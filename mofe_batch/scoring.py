"""lm-eval's log-likelihood multiple choice: tokenization, scoring items, predictions.

Tokenization follows lm-eval's HF backend (`TemplateLM._encode_pair`): trailing whitespace
of the context moves onto the continuation, `context + continuation` is encoded whole with
the tokenizer's default special tokens (none added when the text already starts with the
BOS string, e.g. written by a chat template), and the continuation tokens are the whole encoding
minus the first len(encode(context)) tokens. The model input is encode(context) followed by
those continuation tokens. The option's log-likelihood is the sum of log p(token) over the
continuation tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ScoreItem:
    """One question's scoring job: shared context tokens and one token list per option."""

    context: list[int]
    continuations: list[list[int]]
    truncated: bool = False
    # Prompt tokens the engine computed (not read from its prefix cache); set by scorers
    # that know it (vLLM). None: every scored token was computed.
    computed_tokens: int | None = None

    @property
    def single_token(self) -> bool:
        # Every option is one token: one forward pass over the context scores them all.
        return all(len(c) == 1 for c in self.continuations)

    @property
    def num_tokens(self) -> int:
        if self.single_token:
            return len(self.context)
        return sum(len(self.context) + len(c) for c in self.continuations)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    bos = getattr(tokenizer, "bos_token", None)
    special = not (bos and context.startswith(bos))  # a BOS already written is not doubled
    whole = tokenizer.encode(context + continuation, add_special_tokens=special)
    context_enc = tokenizer.encode(context, add_special_tokens=special)
    return context_enc, whole[len(context_enc):]


def build_item(tokenizer, context: str, continuations: list[str],
               max_len: int | None = None) -> ScoreItem:
    """Encode all options of one question; left-truncate to `max_len` tokens per sequence."""
    item = build_items(tokenizer, [(context, continuations)], max_len)[0]
    if isinstance(item, ValueError):
        raise item
    return item


def build_items(tokenizer, jobs: list[tuple[str, list[str]]],
                max_len: int | None = None) -> list[ScoreItem | ValueError]:
    """`encode_pair` for every option of every (context, continuations) job, with one
    batched tokenizer call for the lot (the Rust tokenizer encodes a list far faster than
    one string at a time) and each context encoded once. A job that cannot be scored comes
    back as a ValueError in its place."""
    texts: list[str] = []
    written_bos: list[bool] = []  # per text: the prompt already starts with the BOS string
    bos = getattr(tokenizer, "bos_token", None)
    for context, continuations in jobs:
        n_spaces = len(context) - len(context.rstrip())
        head = context[:-n_spaces] if n_spaces else context
        texts.append(head)
        texts.extend(context + c for c in continuations)  # tail whitespace joins the option
        written_bos += [bool(bos) and context.startswith(bos)] * (1 + len(continuations))
    encoded = _encode(tokenizer, texts, written_bos)
    items: list[ScoreItem | ValueError] = []
    k = 0
    for _, continuations in jobs:
        ctx = list(encoded[k])
        conts = [list(w[len(ctx):]) for w in encoded[k + 1:k + 1 + len(continuations)]]
        k += 1 + len(continuations)
        items.append(_checked(ctx, conts, continuations, max_len))
    return items


def _encode(tokenizer, texts: list[str], written_bos: list[bool]) -> list[list[int]]:
    """Token ids of each text with the tokenizer's default special tokens, except where the
    text already starts with the BOS string (a chat template that writes `{{ bos_token }}`):
    those are encoded with add_special_tokens=False so BOS is not doubled, as
    lm-evaluation-harness does for chat-templated prompts."""
    out: list[list[int]] = [[] for _ in texts]
    for plain in (True, False):
        idx = [i for i, w in enumerate(written_bos) if w != plain]
        if idx:
            ids = tokenizer([texts[i] for i in idx], add_special_tokens=plain)["input_ids"]
            for i, row in zip(idx, ids, strict=True):
                out[i] = row
    return out


def _checked(ctx: list[int], conts: list[list[int]], texts: list[str],
             max_len: int | None) -> ScoreItem | ValueError:
    for cont, text in zip(conts, texts, strict=True):
        if not cont:
            return ValueError(f"continuation {text!r} encodes to no tokens")
    truncated = False
    if max_len is not None:
        # lm-eval keeps the last max_length tokens of context + continuation as model input.
        keep = max_len - max(len(c) for c in conts)
        if keep < 1:
            return ValueError(f"an option is longer than the model's context ({max_len})")
        if len(ctx) > keep:
            ctx, truncated = ctx[-keep:], True
    return ScoreItem(context=ctx, continuations=conts, truncated=truncated)


@dataclass
class Ranked:
    prediction: int
    prediction_norm: int
    loglikelihoods: list[float]


def rank(loglikelihoods: list[float], choices: list[str]) -> Ranked:
    """lm-eval's argmax (acc) and length-normalised argmax (acc_norm: / len(choice))."""
    def argmax(values: list[float]) -> int:
        # first maximum, as numpy.argmax; NaN never wins
        best = 0
        for i, v in enumerate(values):
            if not math.isnan(v) and (math.isnan(values[best]) or v > values[best]):
                best = i
        return best

    norm = [ll / float(len(c)) for ll, c in zip(loglikelihoods, choices, strict=True)]
    return Ranked(prediction=argmax(loglikelihoods), prediction_norm=argmax(norm),
                  loglikelihoods=list(loglikelihoods))
