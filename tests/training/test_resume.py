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


def _interrupted_while_saving(out: Path) -> Path:
    """What a run killed in the middle of Trainer's checkpoint save leaves: checkpoint-N
    with some files half-written and no trainer_state.json (Trainer writes it last)."""
    partial = Path(f"{out}.work") / "checkpoints" / "checkpoint-10"
    partial.mkdir(parents=True)
    (partial / "trainable.safetensors").write_bytes(b"\x00" * 100)  # truncated
    (Path(f"{out}.work") / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    return partial


def test_incomplete_checkpoint_blocks_neither_resume_nor_restart(kit, merged, tmp_path: Path):
    """The issue's stuck state: a rerun asked for --resume, and --resume found no complete
    checkpoint. Now --resume names --restart, --restart starts over, and a plain rerun
    starts over by itself (an incomplete checkpoint holds nothing to resume)."""
    from click.testing import CliRunner

    from training.cli import train_cli

    run = CliRunner()
    out = tmp_path / "stuck"
    partial = _interrupted_while_saving(out)
    args = train_args(kit, merged, out, "training.max_steps=2")[1:]
    resumed = run.invoke(train_cli, [*args, "--resume"])
    assert resumed.exit_code == 1 and "no complete checkpoint" in resumed.output
    assert "--restart" in resumed.output
    restarted = run.invoke(train_cli, [*args, "--restart"])
    assert restarted.exit_code == 0, restarted.output
    assert (out / "model.safetensors").is_file() and not partial.exists()

    again = tmp_path / "plain"
    _interrupted_while_saving(again)
    plain = run.invoke(train_cli, train_args(kit, merged, again, "training.max_steps=2")[1:])
    assert plain.exit_code == 0, plain.output
    assert "incomplete checkpoint" in plain.output
    rows = [line for line in (again / "metrics.jsonl").open()]
    assert '"loss": 5.0' not in rows[0]  # the discarded run's log is not carried over


def test_progress_is_a_bar_not_raw_log_dicts(kit, merged, tmp_path: Path):
    proc = mofe(*train_args(kit, merged, tmp_path / "bar", "training.max_steps=3",
                            "training.log_every=1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = proc.stdout + proc.stderr
    assert "{'loss'" not in shown and "{'eval_loss'" not in shown  # Trainer's dict prints
    bar = [line for line in shown.replace("\r", "\n").splitlines() if "training:" in line]
    assert any("3/3" in line and "loss=" in line and "lr=" in line for line in bar), bar
    assert any("<" in line for line in bar)  # tqdm's elapsed<remaining (ETA)
