"""Helpers for training tests: run the real `mofe` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MOFE = [sys.executable, "-c", "import sys; from mofe_cli.main import main; sys.exit(main())"]


def mofe(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `mofe` CLI in a subprocess (text output, no exception on failure)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*MOFE, *args], capture_output=True, text=True, env=env,
                          timeout=600, **kwargs)


def mofe_popen(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.Popen([*MOFE, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=env)


def train_args(kit: Path, merged: Path, out: Path, *sets: str) -> list[str]:
    args = ["train", str(kit / "mofe.yaml"), "--set", f"output_dir={out}",
            "--set", f"merge.output={merged}"]
    for s in sets:
        args += ["--set", s]
    return args
