"""Instruction-tune a merged MoFE checkpoint with transformers' Trainer, one loop for all methods.

Trainer does the loop, grad accumulation, LR schedule, eval, checkpoints and exact resume
(model, optimizer, scheduler, RNG, data position). We add: the freeze spec (methods.py), a
JSONL metrics log (callbacks.py), refusal to resume when frozen experts changed, and an
atomic final checkpoint (in the merged checkpoint's layout) with a `mofe.json` manifest.

Memory (docs/training.md#precision-and-memory): the model is loaded in the merged
checkpoint's dtype; frozen expert FFNs stay in it (one copy, never written), every other
weight is widened to fp32. Mid-run checkpoints hold only the trainable state
(training/trainer.py); the final save frees the optimizer first and writes the experts by
hard link or kernel copy from the merged checkpoint (training/save.py).

Layout on disk while training:  <output_dir>.work/checkpoints/checkpoint-N  (Trainer's)
                                <output_dir>.work/metrics.jsonl
At the end <output_dir>.work/final is renamed to <output_dir>: a failed or interrupted run
never leaves something at <output_dir> that looks like a finished checkpoint. A checkpoint
is complete once Trainer wrote its trainer_state.json (its last file); --resume continues
from the newest complete one, --restart discards the interrupted run.
"""

from __future__ import annotations

import gc
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from model_registry.checkpoint import CheckpointError, expert_hashes
from model_registry.frozen import compare
from model_registry.manifest import FreezeSpec, Manifest, ModelSource, TrainingRecord

from .config import RunConfig
from .merge import merge_experts, project_version
from .methods import (
    apply_method,
    assert_freeze_applied,
    is_expert_param,
    param_counts,
    render_param_table,
)
from .save import make_readable, save_weights


class TrainError(RuntimeError):
    """Training cannot start or resume; the message says why and what to do."""


def work_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".work")


def _checkpoints(root: Path) -> list[Path]:
    return [p for p in root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]


def _complete(ckpt: Path) -> bool:
    return (ckpt / "trainer_state.json").is_file()  # Trainer writes it last


def last_complete_checkpoint(root: Path) -> Path | None:
    """Newest checkpoint-N whose trainer_state.json exists."""
    done = [p for p in _checkpoints(root) if _complete(p)]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def prepare_work_dir(work: Path, resume: bool, restart: bool, console) -> Path | None:
    """Decide what to do with an earlier run's `<output_dir>.work`; returns the checkpoint to
    resume from. Incomplete checkpoints (a run killed while saving) are removed: they can
    never be resumed, so they must not block a resume or a fresh start."""
    root = work / "checkpoints"
    if resume and restart:
        raise TrainError("pass either --resume or --restart, not both")
    if restart:
        if work.exists():
            console.print(f"--restart: removing the earlier run's {work}")
            shutil.rmtree(work, ignore_errors=True)
        return None
    for partial in [p for p in _checkpoints(root) if not _complete(p)]:
        console.print(f"removing incomplete checkpoint {partial} (interrupted while saving)")
        shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(work / "final", ignore_errors=True)  # a final save that did not finish
    found = last_complete_checkpoint(root)
    if resume and found is None:
        raise TrainError(f"--resume: no complete checkpoint under {root}; pass --restart "
                         "to start over")
    if not resume and found is not None:
        raise TrainError(f"{work} holds {found.name} of an earlier run: pass --resume to "
                         "continue it, or --restart to discard it and start over")
    if not resume and work.exists():  # leftovers without any checkpoint: nothing to keep
        shutil.rmtree(work, ignore_errors=True)
    return found


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
        bf16=t.precision == "bf16",  # autocast only: trainable weights stay fp32
        logging_strategy="steps", logging_steps=t.log_every, logging_first_step=True,
        eval_strategy="steps" if has_eval else "no", eval_steps=t.eval_every,
        save_strategy="steps", save_steps=t.save_every, save_total_limit=t.save_total_limit,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=t.use_cpu or not torch.cuda.is_available(), disable_tqdm=False,
    )


def load_for_training(merged: Path, stored_dtype: str, method: str, **config_overrides):
    """The merged model in its stored dtype, then every weight but the frozen expert FFNs
    widened to fp32 one tensor at a time (pure-bf16 AdamW drops small updates, FACTS.md).

    Frozen experts stay as loaded: one copy, in the stored dtype. transformers' grouped_mm
    experts kernel casts the activations to the weights' dtype, so they need no fp32 copy;
    widening bf16 to fp32 and rounding back on save is exact for everything else that does
    not train."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=getattr(torch, stored_dtype),
                                                 **config_overrides)
    with torch.no_grad():
        for name, param in model.named_parameters():
            keep = method != "full" and is_expert_param(name)
            if not keep and param.dtype != torch.float32:
                param.data = param.data.to(torch.float32)
    return model


def free_training_state(trainer) -> None:
    """Drop the optimizer (AdamW: two fp32 tensors per trainable weight), scheduler and
    gradients before the final save; Trainer, accelerate and the callback handler each
    hold a reference."""
    for owner in (trainer, trainer.callback_handler):
        owner.optimizer = None
        owner.lr_scheduler = None
    trainer.accelerator._optimizers.clear()
    trainer.accelerator._schedulers.clear()
    trainer.model.zero_grad(set_to_none=True)
    gc.collect()
    _return_freed_memory()


def _return_freed_memory() -> None:
    """glibc keeps freed small and mid-sized blocks (attention weights' AdamW state) in its
    heap; malloc_trim hands them back to the OS, so the drop shows in RSS. glibc only."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_training(cfg: RunConfig, resume: bool = False, console=None,
                 callbacks: list | None = None, restart: bool = False) -> Path:
    """Merge if needed, train, save atomically; returns the finished checkpoint directory."""
    from rich.console import Console
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, set_seed
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK

    from .callbacks import JsonlMetrics, TrainProgress, last_train_loss
    from .data import load_data
    from .trainer import MoFETrainer

    console = console or Console()
    out = Path(cfg.output_dir).resolve()
    work = work_dir(out)
    root = work / "checkpoints"
    if out.exists():
        raise TrainError(f"{out} already exists; choose another output_dir or remove it")
    resume_from = prepare_work_dir(work, resume, restart, console)

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
    # With output_router_logits Mixtral adds coef * load-balancing loss to the loss; the coef
    # is read at construction, so it goes in as a config override here.
    aux = {"output_router_logits": True, "router_aux_loss_coef": coef} if coef else {}
    model = load_for_training(merged, parent.dtype, cfg.method, **aux)
    model = apply_method(model, cfg.method, cfg.lora)
    assert_freeze_applied(model, cfg.method)
    total, trainable = param_counts(model)
    console.print(render_param_table(cfg.method, total, trainable))

    if resume_from is not None:
        if cfg.method == "mofe" and (resume_from / "model.safetensors").is_file():
            check_frozen_unchanged(parent, resume_from, "checkpoint")  # a full-model checkpoint
        if cfg.method != "full":  # the frozen experts are (re)loaded from the merged checkpoint
            check_frozen_unchanged(parent, merged, "base checkpoint")
        console.print(f"resuming from {resume_from}")

    work.mkdir(parents=True, exist_ok=True)
    trainer = MoFETrainer(
        model=model, args=_training_args(cfg, root, bool(data.eval)),
        train_dataset=data.train, eval_dataset=data.eval or None, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        callbacks=[JsonlMetrics(work / "metrics.jsonl"), *(callbacks or [])],
    )
    trainer.remove_callback(DEFAULT_PROGRESS_CALLBACK)  # prints raw log dicts; ours instead
    trainer.add_callback(TrainProgress())
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_loss = _final_eval_loss(trainer) if data.eval else None
    train_loss = last_train_loss(trainer.state)
    free_training_state(trainer)

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
    trained.config.dtype = getattr(torch, parent.dtype)
    # The merged checkpoint's files, names and dtypes (docs/format.md): trained tensors are
    # rounded back to the stored dtype one at a time; frozen experts (every method but
    # full) are hard-linked or kernel-copied from the merged checkpoint, never re-encoded.
    save_weights(trained, merged, final, copy_experts=cfg.method != "full")
    trained.config.save_pretrained(final)
    if trained.can_generate() and trained.generation_config is not None:
        trained.generation_config.save_pretrained(final)
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
    make_readable(final)
    os.replace(final, out)  # the finished checkpoint appears in one step
    shutil.rmtree(work, ignore_errors=True)
