"""The trained checkpoint loads in vLLM 0.32's native Mixtral and generates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("vllm_generate.py")


@pytest.mark.engine
def test_vllm_native_mixtral_generates(mofe_ckpt: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(mofe_ckpt)], capture_output=True,
                          text=True, env=env, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
                 if line.startswith(("ARCH ", "TOKENS ", "TEXT ")))
    assert lines["ARCH"] == "MixtralForCausalLM"
    assert int(lines["TOKENS"]) == 8
