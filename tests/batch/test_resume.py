"""Real `mofe batch` subprocesses killed mid-run (SIGKILL, SIGINT) and rerun.

Uses the transformers backend on the kit's dense base model: resumability is the writer's
and runner's job, the same for every backend, and this backend starts in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mofe_batch.output import repair_and_read_ids

from .conftest import write_jsonl

MOFE = str(Path(sys.executable).with_name("mofe"))
LIMIT = 120
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    subjects = ["Anatomy", "Pharmacology", "Physiology"]
    rows = [{"id": f"r{i:05d}", "question": f"Question number {i} about the liver?",
             "opa": "heart", "opb": "liver", "opc": "kidney", "opd": "lung", "cop": i % 4,
             "subject_name": subjects[i % 3]} for i in range(LIMIT + 200)]
    rows.insert(10, {"id": "broken", "question": "?"})  # malformed: skipped every run
    return write_jsonl(tmp_path_factory.mktemp("batch-resume") / "in.jsonl", rows)


def _start(kit: Path, src: Path, out: Path, limit: int = LIMIT) -> subprocess.Popen:
    cmd = [MOFE, "batch", str(kit / "base"), "--task", "medmcqa", "--input", str(src),
           "--output", str(out), "--backend", "hf", "--dtype", "float32", "--limit",
           str(limit), "--chunk-size", "2", "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _wait_for_lines(proc: subprocess.Popen, out: Path, more_than: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") > more_than:
            return
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.01)
    proc.kill()
    raise TimeoutError("no output lines appeared")


def _ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in out.read_text().splitlines()]


def test_sigkill_at_any_point_then_rerun_gives_one_line_per_id(kit, big_input, tmp_path):
    out = tmp_path / "out.jsonl"
    for threshold in (5, 40):  # two kills at different points, each resumed
        proc = _start(kit, big_input, out)
        _wait_for_lines(proc, out, threshold)
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(_ids(out)) < LIMIT or out.read_bytes()[-1:] != b"\n"
    proc = _start(kit, big_input, out)
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, log
    ids = _ids(out)
    expected = {f"r{i:05d}" for i in range(LIMIT)}
    assert len(ids) == len(set(ids)) == LIMIT and set(ids) == expected
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["resumed"] > 40 and report["resumed"] + report["scored_this_run"] == LIMIT
    assert report["overall"]["n"] == LIMIT
    assert report["skipped"]["count"] == 1
    assert "in.jsonl:line 11: missing field" in report["skipped"]["examples"][0]["where"] + \
        ": " + report["skipped"]["examples"][0]["reason"]


def test_sigint_stops_cleanly_with_whole_lines_and_a_report(kit, big_input, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = _start(kit, big_input, out)
    _wait_for_lines(proc, out, 5)
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 130, log
    assert "interrupt" in log
    text = out.read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]  # every line whole
    assert 5 < len(rows) < LIMIT
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["interrupted"] is True and report["overall"]["n"] == len(rows)


def test_two_concurrent_runs_on_one_output_the_second_is_refused(kit, tmp_path):
    """Real processes: while one run writes OUTPUT, a second on the same OUTPUT exits with
    an error naming the first one's pid, before loading a model or touching the file; after
    the first is SIGKILLed, its lock is gone with it and a rerun resumes."""
    rows = [{"id": f"c{i:05d}", "question": f"Question {i} about the liver?", "opa": "heart",
             "opb": "liver", "opc": "kidney", "opd": "lung", "cop": i % 4,
             "subject_name": "Anatomy"} for i in range(3000)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    first = _start(kit, src, out, limit=3000)
    try:
        _wait_for_lines(first, out, 2)
        second = _start(kit, src, out, limit=3000)
        log = second.communicate(timeout=300)[0].decode()
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 1, log
        assert f"another mofe batch run (pid {first.pid}) is writing {out}" in log
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    written = len(repair_and_read_ids(out))  # whole lines (the kill may have torn one)
    third = _start(kit, src, out, limit=written + 4)  # the dead run's lock does not linger
    log = third.communicate(timeout=300)[0].decode()
    assert third.returncode == 0, log
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == written + 4
