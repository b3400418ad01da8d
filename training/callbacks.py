"""Trainer callbacks for what transformers' Trainer lacks: a JSONL metrics log."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class JsonlMetrics(TrainerCallback):
    """Append every Trainer log (train loss, lr, grad norm, eval loss) as one JSON line.

    Trainer only reports to external trackers (report_to); a plain file needs no service and
    survives `--resume` (we append)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def last_train_loss(state) -> float | None:
    """The most recent logged training loss in Trainer's log history."""
    for entry in reversed(state.log_history):
        if "loss" in entry:
            return float(entry["loss"])
    return None
