"""Instruction-tune a merged MoFE checkpoint with transformers' Trainer, one loop for all methods.

Trainer does the loop, grad accumulation, LR schedule, eval, checkpoints and exact resume
(model, optimizer, scheduler, RNG, data position). We add: the freeze spec (methods.py), a
JSONL metrics log (callbacks.py), refusal to resume when frozen experts changed, and an
atomic final checkpoint (in the merged checkpoint's layout) with a `mofe.json` manifest.

Layout on disk while training:  <output_dir>.work/checkpoints/checkpoint-N  (Trainer's)
                                <output_dir>.work/metrics.jsonl
At the end <output_dir>.work/final is renamed to <output_dir>: a failed or interrupted run
never leaves something at <output_dir> that looks like a finished checkpoint.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from model_registry.checkpoint import CheckpointError, expert_hashes
from model_registry.frozen import compare
from model_registry.manifest import FreezeSpec, Manifest, ModelSource, TrainingRecord

from .config import RunConfig
from .merge import merge_experts, project_version
from .methods import apply_method, assert_freeze_applied, param_counts, render_param_table


class TrainError(RuntimeError):
    """Training cannot start or resume; the message says why and what to do."""


def work_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".work")


def last_complete_checkpoint(root: Path) -> Path | None:
    """Newest checkpoint-N whose trainer_state.json exists (Trainer writes it last)."""
    done = [p for p in root.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
            and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def check_frozen_unchanged(parent: Manifest, weights_dir: Path, what: str) -> None:
    """Refuse to go on when expert FFN tensors in `weights_dir` differ from the manifest."""
    try:  # Trainer checkpoints hold fp32 weights: compare them converted to the manifest dtype
        now = expert_hashes(weights_dir, as_dtype=parent.dtype)
    except (CheckpointError, OSError) as exc:
        raise TrainError(f"cannot read expert tensors of {what} {weights_dir}: {exc}") from exc
    bad = []
    for e in parent.experts:
        result = compare(e.sha256, now.get(e.index, {}))
        bad += [f"expert {e.index} {k}" for k in result["all_mismatched"] + result["missing"]]
    if bad:
        raise TrainError(f"refusing to resume: frozen expert tensors in {what} {weights_dir} "
                         f"changed ({', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''})")


def _training_args(cfg: RunConfig, root: Path, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    t = cfg.training
    return TrainingArguments(
        output_dir=str(root), max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        optim="adamw_torch", seed=cfg.seed, data_seed=cfg.seed,
        bf16=t.precision == "bf16",  # autocast only: the weights stay fp32
        logging_strategy="steps", logging_steps=t.log_every, logging_first_step=True,
        eval_strategy="steps" if has_eval else "no", eval_steps=t.eval_every,
        save_strategy="steps", save_steps=t.save_every, save_total_limit=t.save_total_limit,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=t.use_cpu or not torch.cuda.is_available(), disable_tqdm=False,
    )


def run_training(cfg: RunConfig, resume: bool = False, console=None,
                 callbacks: list | None = None) -> Path:
    """Merge if needed, train, save atomically; returns the finished checkpoint directory."""
    import torch
    from rich.console import Console
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        set_seed,
    )

    from .callbacks import JsonlMetrics, last_train_loss
    from .data import load_data
    from .trainer import MoFETrainer

    console = console or Console()
    out = Path(cfg.output_dir).resolve()
    work = work_dir(out)
    root = work / "checkpoints"
    if out.exists():
        raise TrainError(f"{out} already exists; choose another output_dir or remove it")
    resume_from = last_complete_checkpoint(root) if resume else None
    if resume and resume_from is None:
        raise TrainError(f"--resume: no complete checkpoint under {root}")
    if not resume and any(root.glob("checkpoint-*")):
        raise TrainError(f"{work} holds checkpoints of an earlier run: pass --resume to "
                         f"continue it, or remove {work} to start over")

    merged = cfg.merged_dir().resolve()
    if cfg.merge is not None and not merged.exists():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would race to merge
            raise TrainError(f"{merged} does not exist: under torchrun/accelerate run "
                             f"`mofe merge CONFIG {merged}` first, then train")
        console.print(f"merging {len(cfg.merge.experts)} experts into {merged}")
        merge_experts(cfg.merge, merged, cfg.seed)
    if not (merged / "config.json").is_file():
        raise TrainError(f"model {merged} is not a checkpoint directory (no config.json)")
    parent = Manifest.load(merged)
    coef = cfg.training.router_aux_loss_coef
    if coef and parent.num_experts <= parent.top_k:
        raise TrainError(f"training.router_aux_loss_coef needs more experts than top-k; "
                         f"{merged} has {parent.num_experts} experts, top-{parent.top_k}")

    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = load_data(cfg.data, tokenizer, cfg.seed)
    for path, n in data.skipped.items():
        console.print(f"[yellow]skipped {n} malformed rows in {path}[/]")
    # fp32 weights for training: pure-bf16 AdamW drops small updates (FACTS.md); casting a
    # bf16/fp16 checkpoint to fp32 and back is exact, so frozen experts stay bit-identical.
    # With output_router_logits Mixtral adds coef * load-balancing loss to the loss; the coef
    # is read at construction, so it goes in as a config override here.
    aux = {"output_router_logits": True, "router_aux_loss_coef": coef} if coef else {}
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, **aux)
    model = apply_method(model, cfg.method, cfg.lora)
    assert_freeze_applied(model, cfg.method)
    total, trainable = param_counts(model)
    console.print(render_param_table(cfg.method, total, trainable))

    if resume_from is not None:
        if cfg.method == "mofe":
            check_frozen_unchanged(parent, resume_from, "checkpoint")
        elif cfg.method in ("lora", "dora"):
            check_frozen_unchanged(parent, merged, "base checkpoint")
        console.print(f"resuming from {resume_from}")

    work.mkdir(parents=True, exist_ok=True)
    trainer = MoFETrainer(
        model=model, args=_training_args(cfg, root, bool(data.eval)),
        train_dataset=data.train, eval_dataset=data.eval or None, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        callbacks=[JsonlMetrics(work / "metrics.jsonl"), *(callbacks or [])],
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_loss = _final_eval_loss(trainer) if data.eval else None
    train_loss = last_train_loss(trainer.state)

    if trainer.is_world_process_zero():  # one writer under torchrun/accelerate
        _save_final(cfg, trainer, tokenizer, parent, merged, work, out, data, total, trainable,
                     train_loss, eval_loss)
    trainer.accelerator.wait_for_everyone()
    return out


def _final_eval_loss(trainer) -> float:
    """Eval loss at the last step: reuse Trainer's own eval when it ran at that step."""
    last = trainer.state.log_history[-2:] if trainer.state.log_history else []
    for entry in last:
        if "eval_loss" in entry and entry.get("step") == trainer.state.global_step:
            return float(entry["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


def _save_final(cfg, trainer, tokenizer, parent, merged, work, out, data, total, trainable,
                train_loss, eval_loss) -> None:
    import torch

    final = work / "final"
    shutil.rmtree(final, ignore_errors=True)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.method in ("lora", "dora"):
        trained = trained.merge_and_unload()  # a full checkpoint: adapters folded in
    trained.config.output_router_logits = False
    # save_pretrained writes the layout the model was loaded from (docs/format.md): the
    # merged checkpoint's, so nothing is converted here. Experts cast back to the manifest
    # dtype exactly (they were widened from it for training).
    trained.to(getattr(torch, parent.dtype)).save_pretrained(final)
    tokenizer.save_pretrained(final)
    shutil.copy2(work / "metrics.jsonl", final / "metrics.jsonl")
    manifest = parent.model_copy(deep=True, update={
        "project_version": project_version(),
        "created_at": datetime.now(timezone.utc).isoformat(),
        # lora/dora freeze every base weight (experts included); full freezes nothing
        "freeze": FreezeSpec(method=cfg.method, frozen=[] if cfg.method == "full" else
                             FreezeSpec().frozen),
        "params": total,
        "parent": ModelSource(source=str(merged)),
        "training": TrainingRecord(
            method=cfg.method, config=cfg.model_dump(mode="json"), data_files=data.file_hashes,
            seed=cfg.seed, steps=trainer.state.global_step, final_train_loss=train_loss,
            final_eval_loss=eval_loss, trainable_params=trainable),
    })
    manifest.save(final)
    os.replace(final, out)  # the finished checkpoint appears in one step
    shutil.rmtree(work, ignore_errors=True)
