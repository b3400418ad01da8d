"""Session fixtures for training tests: one merge and one MoFE run on the session's kit
(the `kit` fixture of tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import mofe, train_args


@pytest.fixture(scope="session")
def training_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="session")
def merged(kit: Path, training_dir: Path) -> Path:
    from training.config import load_config
    from training.merge import merge_experts

    cfg = load_config(kit / "mofe.yaml")
    out = training_dir / "merged"
    merge_experts(cfg.merge, out, cfg.seed)
    return out


@pytest.fixture(scope="session")
def mofe_ckpt(kit: Path, merged: Path, training_dir: Path) -> Path:
    """The kit's default MoFE run (20 steps, checkpoints every 10), uninterrupted."""
    out = training_dir / "mofe-run"
    proc = mofe(*train_args(kit, merged, out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out
