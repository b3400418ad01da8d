"""The training config: one YAML file validated by pydantic, plus `--set a.b=c` overrides.

Relative paths inside the YAML are resolved against the YAML file's directory (so a kit or a
config folder can move); paths given with `--set` are resolved against the working directory.
Unknown keys are rejected (extra="forbid") and every error names the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .overrides import ConfigError, apply_override, looks_like_hub_id, parse_override, resolve_paths


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Strict):
    """A dense Llama model: a local directory or a Hugging Face hub id (with revision)."""

    source: str
    revision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        return {"source": value} if isinstance(value, str) else value


class ExpertSpec(ModelRef):
    domain: str
    # Router initialisation prompts (mergekit "hidden"/"cheap_embed" gate modes, as in the paper)
    positive_prompts: list[str] = Field(default_factory=list)
    negative_prompts: list[str] = Field(default_factory=list)


class MergeConfig(_Strict):
    base_model: ModelRef
    experts: list[ExpertSpec] = Field(min_length=1)
    gate_mode: Literal["hidden", "cheap_embed", "random"] = "hidden"
    experts_per_token: int = Field(2, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    output: str | None = Field(
        None, description="where the merged checkpoint goes; default: <output_dir>.merged")

    @model_validator(mode="after")
    def _check(self) -> MergeConfig:
        if self.experts_per_token > len(self.experts):
            raise ValueError(f"experts_per_token ({self.experts_per_token}) is larger than the "
                             f"number of experts ({len(self.experts)})")
        if self.gate_mode != "random":
            missing = [e.domain for e in self.experts if not e.positive_prompts]
            if missing:
                raise ValueError(f"gate_mode {self.gate_mode!r} needs positive_prompts for every "
                                 f"expert; missing for: {', '.join(missing)}")
        return self


class DataFile(_Strict):
    path: str
    # text: plain `text` rows, loss on every token (continued pretraining); the others are
    # instruction formats, loss on the answer only
    format: Literal["chat", "alpaca", "medmcqa", "mmlu", "text"] = "chat"
    limit: int | None = Field(None, ge=1, description="use only the first N rows")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        return {"path": value} if isinstance(value, str) else value


class DataConfig(_Strict):
    train: list[DataFile] = Field(min_length=1)
    eval: list[DataFile] = Field(default_factory=list)
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                 description="held-out share of train when `eval` is empty")
    max_length: int = Field(256, ge=8)
    skip_malformed: bool = False
    system_prompt: str | None = None


class LoraConfig(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class TrainConfig(_Strict):
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1)
    save_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    # fp32: everything fp32 (right for CPU and tiny models). bf16: trainable weights stay fp32,
    # compute under bf16 autocast (pure-bf16 AdamW drops most small updates, see FACTS.md).
    precision: Literal["fp32", "bf16"] = "fp32"
    router_aux_loss_coef: float | None = Field(
        None, ge=0, description="router load-balancing loss; needs more experts than top-k")
    use_cpu: bool = False


class RunConfig(_Strict):
    method: Literal["mofe", "full", "lora", "dora"] = "mofe"
    output_dir: str
    seed: int = 0
    model: str | None = Field(None, description="a merged MoFE checkpoint; omit to merge")
    merge: MergeConfig | None = None
    data: DataConfig
    training: TrainConfig = Field(default_factory=TrainConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.model is None and self.merge is None:
            raise ValueError("set either `model` (a merged checkpoint) or a `merge` section")
        if self.model is not None and self.merge is not None:
            raise ValueError("set only one of `model` and `merge`")
        if self.training.router_aux_loss_coef and self.merge is not None:
            m = self.merge
            if len(m.experts) <= m.experts_per_token:
                raise ValueError(
                    "training.router_aux_loss_coef needs more experts than experts_per_token "
                    f"({len(m.experts)} experts, top-{m.experts_per_token}): with dense routing "
                    "the load-balancing loss is a constant")
        return self

    def merged_dir(self) -> Path:
        if self.model is not None:
            return Path(self.model)
        assert self.merge is not None
        return Path(self.merge.output or f"{self.output_dir}.merged")


def load_config(path: Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    resolve_paths(raw, path.resolve().parent)
    for text in overrides:
        parts, value = parse_override(text)
        if parts[-1] in ("output_dir", "model", "output", "path", "source") and isinstance(
                value, str) and not Path(value).is_absolute():
            if not (parts[-1] == "source" and looks_like_hub_id(value)
                    and not Path(value).exists()):
                value = str(Path(value).resolve())
        apply_override(raw, parts, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config:\n{_format_errors(exc)}") from None


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
        else:
            lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
