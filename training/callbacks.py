"""Trainer callbacks for what transformers' Trainer lacks: a progress bar that shows the
figures a user watches (loss, learning rate, ETA) instead of printing raw log dicts, and a
JSONL log of the same figures."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class _Clock:
    """Elapsed time and ETA of this process's share of the run (a resumed run starts at
    its checkpoint's step, so its rate is measured from there)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.first_step: int | None = None

    def begin(self, state) -> None:
        self.start, self.first_step = time.monotonic(), state.global_step

    def figures(self, state) -> dict:
        elapsed = time.monotonic() - self.start
        done = state.global_step - (self.first_step or 0)
        left = max(state.max_steps - state.global_step, 0)
        eta = elapsed / done * left if done > 0 else None
        return {"elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(eta, 3)}


class JsonlMetrics(TrainerCallback):
    """Append every Trainer log (train loss, learning rate, grad norm, eval loss) with the
    step, elapsed seconds and ETA as one JSON line.

    Trainer only reports to external trackers (report_to); a plain file needs no service and
    survives `--resume` (we append)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.clock = _Clock()

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.begin(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "max_steps": state.max_steps,
                  "epoch": state.epoch, "time": time.time(), **self.clock.figures(state), **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


class TrainProgress(TrainerCallback):
    """One tqdm bar for the run: steps done, ETA (tqdm's own), and the latest loss, learning
    rate and eval loss as its postfix. Replaces Trainer's ProgressCallback, which writes
    every log dict as a raw line."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training",
                            unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        shown = {}
        if "loss" in logs:
            shown["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            shown["lr"] = f"{logs['learning_rate']:.2e}"
        if "eval_loss" in logs:
            shown["eval_loss"] = f"{logs['eval_loss']:.4f}"
        if shown:
            self.bar.set_postfix(shown, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def last_train_loss(state) -> float | None:
    """The most recent logged training loss in Trainer's log history."""
    for entry in reversed(state.log_history):
        if "loss" in entry:
            return float(entry["loss"])
    return None
