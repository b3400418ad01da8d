"""Crash-test hook: MOFE_REGISTRY_TEST_PAUSE_AT=<stage> makes `register` stop at that stage.

The process prints `MOFE-PAUSED <stage>` to stderr and waits, so a test can SIGKILL it
exactly there and check that nothing half-written is visible, or (when
MOFE_REGISTRY_TEST_RESUME_FILE names a file) go on once that file exists, so several
processes can be released into the same stage at once. Stages, in order: staged, hashed,
locked, placed, inserted (see Registry.register and SQLMetadataStore.publish).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PAUSE_ENV = "MOFE_REGISTRY_TEST_PAUSE_AT"
RESUME_ENV = "MOFE_REGISTRY_TEST_RESUME_FILE"
STAGES = ("staged", "hashed", "locked", "placed", "inserted")


def pause_point(stage: str) -> None:
    if os.environ.get(PAUSE_ENV) != stage:
        return
    print(f"MOFE-PAUSED {stage}", file=sys.stderr, flush=True)
    resume = os.environ.get(RESUME_ENV)
    while not (resume and Path(resume).exists()):
        time.sleep(0.05 if resume else 3600)
