"""Kill a real training process after a checkpoint, resume, and match an uninterrupted run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from train_helpers import mofe, mofe_popen, train_args


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(kit, merged, mofe_ckpt: Path, tmp_path: Path):
    from safetensors.torch import load_file

    out = tmp_path / "killed"
    ckpt = Path(f"{out}.work") / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    proc = mofe_popen(*train_args(kit, merged, out), log=tmp_path / "run.log")
    try:
        while not ckpt.exists():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and not out.exists()  # nothing looks finished

    again = mofe(*train_args(kit, merged, out))
    assert again.returncode == 1 and "--resume" in again.stderr  # refuses to silently restart

    resumed = mofe(*train_args(kit, merged, out), "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout
    verified = mofe("verify", str(out))  # experts still bit-identical to their sources
    assert verified.returncode == 0, verified.stdout + verified.stderr
    a = load_file(str(mofe_ckpt / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name


def test_resume_refused_when_frozen_experts_changed(kit, merged, mofe_ckpt, tmp_path: Path):
    from click.testing import CliRunner
    from safetensors.torch import load_file, save_file

    from training.cli import train_cli

    # an interrupted run whose Trainer checkpoint has one expert tensor modified
    out = tmp_path / "tampered"
    ck = Path(f"{out}.work") / "checkpoints" / "checkpoint-2"
    ck.mkdir(parents=True)
    state = load_file(str(mofe_ckpt / "model.safetensors"))
    state["model.layers.1.block_sparse_moe.experts.2.w3.weight"] += 1e-3
    save_file(state, str(ck / "model.safetensors"))
    (ck / "trainer_state.json").write_text("{}")
    result = CliRunner().invoke(train_cli, [*train_args(kit, merged, out)[1:], "--resume"])
    assert result.exit_code == 1
    assert "refusing to resume" in result.output and "expert 2 1.w3" in result.output
    assert not out.exists()
