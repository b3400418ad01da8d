"""Training methods on one model: MoFE (freeze expert FFNs), full, LoRA and DoRA (PEFT).

Also the itemised parameter report (embed / attention / router / norms / lm_head / experts /
adapters) printed and stored for every method.
"""

from __future__ import annotations

from model_registry.checkpoint import EXPERT_PARAM_MARKERS, ROUTER_PARAM_MARKERS
from model_registry.manifest import ParamCounts

from .config import LoraConfig

_ADAPTER_MARKERS = ("lora_", "lora_magnitude_vector")
CATEGORIES = ("embed", "attention", "router", "norms", "lm_head", "experts", "adapters")


def is_expert_param(name: str) -> bool:
    # PEFT adapters would sit under expert module names if one targeted them: base weights only
    return any(m in name for m in EXPERT_PARAM_MARKERS) and not is_adapter_param(name)


def is_adapter_param(name: str) -> bool:
    return any(m in name for m in _ADAPTER_MARKERS)


def category(name: str) -> str:
    if is_adapter_param(name):
        return "adapters"
    if is_expert_param(name):
        return "experts"
    if "embed_tokens" in name:
        return "embed"
    if "lm_head" in name:
        return "lm_head"
    if ".self_attn." in name:
        return "attention"
    if any(m in name for m in ROUTER_PARAM_MARKERS):
        return "router"
    if "norm" in name:
        return "norms"
    raise ValueError(f"parameter {name!r} fits no category of the parameter report")


def apply_method(model, method: str, lora: LoraConfig):
    """Set requires_grad for `method`; LoRA/DoRA wrap the model with PEFT adapters."""
    if method in ("lora", "dora"):
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                  target_modules=list(lora.target_modules),
                                  use_dora=method == "dora", task_type="CAUSAL_LM")
        return get_peft_model(model, peft_cfg)  # freezes every base weight
    for name, param in model.named_parameters():
        param.requires_grad = not (method == "mofe" and is_expert_param(name))
    return model


def param_counts(model) -> tuple[ParamCounts, ParamCounts]:
    """(all parameters, trainable parameters) by category."""
    total = dict.fromkeys(CATEGORIES, 0)
    trainable = dict.fromkeys(CATEGORIES, 0)
    for name, param in model.named_parameters():
        cat = category(name)
        total[cat] += param.numel()
        if param.requires_grad:
            trainable[cat] += param.numel()
    return (ParamCounts(**total, total=sum(total.values()), trainable=sum(trainable.values())),
            ParamCounts(**trainable, total=sum(total.values()),
                        trainable=sum(trainable.values())))


def assert_freeze_applied(model, method: str) -> None:
    """Fail loudly if the method's requires_grad settings were not applied (a cheap guard
    before training; the frozen *claim* of a checkpoint is model_registry.frozen's)."""
    if method != "mofe":
        return
    leaked = [n for n, p in model.named_parameters() if is_expert_param(n) and p.requires_grad]
    if leaked:
        raise RuntimeError(f"expert FFN tensors are trainable under method mofe: {leaked[:3]}")
    if not any(is_expert_param(n) for n, _ in model.named_parameters()):
        raise RuntimeError("method mofe found no expert FFN tensors (is this a Mixtral model?)")


def render_param_table(method: str, total: ParamCounts, trainable: ParamCounts):
    from rich.table import Table

    table = Table(title=f"Parameters ({method})")
    table.add_column("group")
    table.add_column("total", justify="right")
    table.add_column("trainable", justify="right")
    table.add_column("share", justify="right")
    for cat in CATEGORIES:
        t, tr = getattr(total, cat), getattr(trainable, cat)
        table.add_row(cat, f"{t:,}", f"{tr:,}", f"{tr / t:.0%}" if t else "-")
    table.add_row("all", f"{total.total:,}", f"{trainable.trainable:,}",
                  f"{trainable.trainable / total.total:.1%}", style="bold")
    return table
