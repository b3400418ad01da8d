"""`mofe --help` and `mofe registry --help` must not import torch or vLLM."""

import subprocess
import sys

PROBE = """
import sys
from click.testing import CliRunner
from mofe_cli.main import cli
res = CliRunner().invoke(cli, {args!r})
assert res.exit_code == 0, res.output
print(res.output)
heavy = sorted(m for m in ("torch", "vllm", "transformers", "mergekit") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _run(args: list[str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)],
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_root_help_is_light_and_lists_every_concern():
    out = _run(["--help"])
    for name in ("dev", "train", "verify", "registry", "serve", "batch", "merge", "convert"):
        assert f"  {name}" in out
    assert "HEAVY=\n" in out


def test_registry_help_is_light():
    out = _run(["registry", "--help"])
    assert "register" in out
    assert "HEAVY=\n" in out


def test_model_registry_import_pulls_no_torch():
    code = "import model_registry, model_registry.checkpoint, model_registry.frozen, sys; " \
           "assert 'torch' not in sys.modules and 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
