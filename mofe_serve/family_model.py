"""`MoFEFamilyMixtralForCausalLM`: several MoFE variants of one family in one vLLM model.

Variants of one family share every expert FFN bit for bit (checked at start-up by
mofe_serve.family) and differ in everything else. This model holds:
- the fused MoE experts once (vLLM's `FusedMoE`, loaded from the first variant only);
- per variant: embeddings, qkv/o projections, both RMSNorms of each layer, the router gate,
  the final norm and lm_head, as `PerVariant` lists of vLLM's own modules (same classes,
  same weight loaders, same kernels as the single-variant model).

Which variant a token belongs to is a device tensor, `VariantIndex.token_variant`, filled by
the worker (mofe_serve.family_worker) from the scheduler output before each step, as vLLM
fills its padding mask. Nothing in the forward pass reads the host:
- decoder body (`PerVariant.forward`): every variant's module runs on every token of the
  step and `torch.where` keeps, per token, its own variant's rows. Static shapes, no
  data-dependent control flow, so the step is one forward pass under eager, torch.compile and
  CUDA-graph capture alike; the cost is V x the non-expert matmuls (the experts, which
  dominate a MoFE model, run once per token in the shared fused kernel);
- attention (the kernel, KV cache) and the rotary embedding are shared: only the
  projections around them are per variant;
- logits (`compute_logits`, which vLLM calls eagerly outside the compiled graph): each
  variant's lm_head runs on its own rows only, from row groups the worker computed on the
  host while building the step (`LogitsPlan`), so lm_head costs what it costs one variant.

Loading: `load_weights` renames each non-expert tensor of variant v from
`<module>.<param>` to `<module>.variants.<v>.<param>` and hands everything to vLLM's own
Mixtral loader (stacked qkv, router, experts and all). Variant 0's tensors come from vLLM's
iterator over the served checkpoint; the other variants' non-expert tensors are read from
their files one at a time, and their expert tensors are never read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.mixtral import MixtralForCausalLM
from vllm.model_executor.models.utils import PPMissingLayer

from model_registry.checkpoint import non_expert_tensors, parse_name, per_expert_items

from .engine import FAMILY_CONFIG_KEY
from .model import MoFEMixtralForCausalLM

logger = logging.getLogger("mofe_serve.family_model")


class VariantIndex(nn.Module):
    """The per-token variant index of the current step: a buffer allocated once, written by
    the worker between steps, read (never written) by the forward pass."""

    def __init__(self, max_num_tokens: int, num_variants: int):
        super().__init__()
        self.num_variants = num_variants
        self.register_buffer("token_variant", torch.zeros(max_num_tokens, dtype=torch.int64),
                             persistent=False)


def _select(outputs: list, index: torch.Tensor):
    """Per row, the output of that row's variant (tensors, tuples of them, or None)."""
    first = outputs[0]
    if isinstance(first, tuple):
        return tuple(_select([o[i] for o in outputs], index) for i in range(len(first)))
    if first is None:
        return None
    index = index.view((index.shape[0],) + (1,) * (first.dim() - 1))
    out = first
    for v in range(1, len(outputs)):
        out = torch.where(index == v, outputs[v], out)
    return out


class PerVariant(nn.Module):
    """One vLLM module per variant at one place of the model; each token gets its own
    variant's output. `copy_inputs` for modules that update their inputs in place (vLLM's
    fused add + RMSNorm), so every variant sees the step's inputs unchanged."""

    def __init__(self, variants: list[nn.Module], index: VariantIndex,
                 copy_inputs: bool = False):
        super().__init__()
        self.variants = nn.ModuleList(variants)
        self._index = (index,)  # a tuple: the shared index is not a child of every site
        self.copy_inputs = copy_inputs

    def forward(self, *args):
        num_tokens = args[0].shape[0]
        outputs = []
        for module in self.variants:
            inputs = args
            if self.copy_inputs:
                inputs = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
            outputs.append(module(*inputs))
        return _select(outputs, self._index[0].token_variant[:num_tokens])


@dataclass(frozen=True)
class LogitsPlan:
    """Which rows of the next `compute_logits` call belong to which variant.

    `num_rows` None: any number of rows, all of `groups[0]`'s variant (prompt logprobs of one
    request). Row indices are device tensors built from host data the worker already has."""

    num_rows: int | None
    groups: tuple[tuple[int, torch.Tensor | None], ...]


def variant_param_name(name: str, variant: int) -> str:
    """`model.layers.0.self_attn.q_proj.weight` -> `...q_proj.variants.<v>.weight`."""
    head, _, leaf = name.rpartition(".")
    return f"{head}.variants.{variant}.{leaf}"


def _is_expert(name: str) -> bool:
    parsed = parse_name(name)
    return parsed is not None and parsed.kind == "per_expert"


def read_non_expert_tensors(ckpt: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """A variant's non-expert tensors, one at a time (model_registry.checkpoint chooses
    which); its expert bytes are never read."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for info in non_expert_tensors(ckpt):
        by_file.setdefault(info.file, []).append(info.name)
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt") as fh:
            for name in names:
                yield name, fh.get_tensor(name)


def _non_expert_modules(config, quant_config) -> dict:
    """Builders of one variant's non-expert modules, with the classes and arguments of vLLM
    0.32's Mixtral (vllm/model_executor/models/mixtral.py): keep in step with it. Each takes
    variant 0's module (for its shape and prefix) and the variant index."""
    from vllm.model_executor.layers.fused_moe.router.gate_linear import GateLinear
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    hidden = config.hidden_size

    def prefix(module: nn.Module, v: int) -> str:
        return f"{module.prefix}.variants.{v}"

    return {
        "embed_tokens": lambda m, v: VocabParallelEmbedding(config.vocab_size, hidden),
        "norm": lambda m, v: RMSNorm(hidden, eps=config.rms_norm_eps),
        "qkv_proj": lambda attn, m, v: QKVParallelLinear(
            hidden, attn.head_dim, attn.total_num_heads, attn.total_num_kv_heads, bias=False,
            quant_config=quant_config, prefix=prefix(m, v)),
        "o_proj": lambda attn, m, v: RowParallelLinear(
            attn.total_num_heads * attn.head_dim, hidden, bias=False,
            quant_config=quant_config, prefix=prefix(m, v)),
        "gate": lambda m, v: GateLinear(hidden, config.num_local_experts, params_dtype=None,
                                        prefix=prefix(m, v)),
        "lm_head": lambda m, v: ParallelLMHead(config.vocab_size, hidden,
                                               quant_config=quant_config, prefix=prefix(m, v)),
    }


class MoFEFamilyMixtralForCausalLM(MoFEMixtralForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_config
        paths = list(getattr(config, FAMILY_CONFIG_KEY, None) or [])
        if len(paths) < 2:
            raise ValueError(f"{type(self).__name__} needs hf_config.{FAMILY_CONFIG_KEY} with "
                             "at least two checkpoint directories (mofe serve REF REF ...)")
        if config.tie_word_embeddings:
            raise ValueError("serving a family needs untied embeddings and lm_head "
                             "(tie_word_embeddings is true)")
        if vllm_config.speculative_config is not None:
            raise ValueError("serving a family does not support speculative decoding")
        self.family_paths = [Path(p) for p in paths]
        num_variants = len(paths)
        index = VariantIndex(vllm_config.scheduler_config.max_num_batched_tokens, num_variants)
        # On the compiled MixtralModel, so the buffer is an ordinary graph input.
        self.model.mofe_variant_index = index
        # Routing totals per variant (mofe_expert_* series carry the variant's name).
        self.mofe_counters.set_variants(index.token_variant, num_variants)

        def per_variant(module: nn.Module, make, copy_inputs: bool = False) -> PerVariant:
            # Variant 0 keeps vLLM's module; the others get new ones built as vLLM's Mixtral
            # builds it (same classes and arguments, see _non_expert_modules).
            return PerVariant([module, *(make(module, v) for v in range(1, num_variants))],
                              index, copy_inputs)

        make = _non_expert_modules(config, vllm_config.quant_config)
        self.model.embed_tokens = per_variant(self.model.embed_tokens, make["embed_tokens"])
        self.model.norm = per_variant(self.model.norm, make["norm"], copy_inputs=True)
        for layer in self.model.layers:
            if isinstance(layer, PPMissingLayer):
                continue
            attn, moe = layer.self_attn, layer.block_sparse_moe
            attn.qkv_proj = per_variant(attn.qkv_proj, partial(make["qkv_proj"], attn))
            attn.o_proj = per_variant(attn.o_proj, partial(make["o_proj"], attn))
            moe.gate = per_variant(moe.gate, make["gate"])
            layer.input_layernorm = per_variant(layer.input_layernorm, make["norm"],
                                                copy_inputs=True)
            layer.post_attention_layernorm = per_variant(layer.post_attention_layernorm,
                                                         make["norm"], copy_inputs=True)
        self.lm_head = per_variant(self.lm_head, make["lm_head"])
        self.mofe_logits_plan: LogitsPlan | None = None

    @property
    def mofe_variant_index(self) -> VariantIndex:
        return self.model.mofe_variant_index

    @property
    def num_variants(self) -> int:
        return len(self.family_paths)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        heads = self.lm_head.variants
        plan, self.mofe_logits_plan = self.mofe_logits_plan, None  # one plan, one call
        if plan is None:  # vLLM's dummy/profile runs: no request, any head will do
            return self.logits_processor(heads[0], hidden_states)
        if plan.num_rows is None or len(plan.groups) == 1:
            if plan.num_rows is not None and plan.num_rows != hidden_states.shape[0]:
                raise RuntimeError(f"logits plan for {plan.num_rows} rows, got "
                                   f"{hidden_states.shape[0]}")
            return self.logits_processor(heads[plan.groups[0][0]], hidden_states)
        if plan.num_rows != hidden_states.shape[0]:
            raise RuntimeError(f"logits plan for {plan.num_rows} rows, got "
                               f"{hidden_states.shape[0]}")
        out = None
        for variant, rows in plan.groups:
            part = self.logits_processor(heads[variant], hidden_states.index_select(0, rows))
            if part is None:  # not the rank that gathers logits (tensor parallelism)
                return None
            if out is None:
                out = part.new_empty((hidden_states.shape[0], part.shape[1]))
            out.index_copy_(0, rows, part)
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def served_variant() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                for item_name, item in per_expert_items(name, tensor):
                    yield (item_name if _is_expert(item_name)
                           else variant_param_name(item_name, 0)), item

        def other_variants() -> Iterator[tuple[str, torch.Tensor]]:
            for variant, path in enumerate(self.family_paths[1:], start=1):
                logger.info("loading variant %d's non-expert weights from %s", variant, path)
                for name, tensor in read_non_expert_tensors(path):
                    for item_name, item in per_expert_items(name, tensor):
                        yield variant_param_name(item_name, variant), item

        # vLLM's Mixtral loader, not MoFEMixtralForCausalLM's (the renaming above already
        # split fused tensors into per-expert views).
        return MixtralForCausalLM.load_weights(self, chain(served_variant(), other_variants()))
