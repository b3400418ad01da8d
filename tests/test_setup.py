"""The venv `make setup` builds has both halves of the stack importable together."""

import subprocess
import sys


def test_transformers_mixtral_and_vllm_import_together():
    code = ("import transformers.models.mixtral.modeling_mixtral as m, vllm, mergekit, peft; "
            "print(m.MixtralForCausalLM.__name__, vllm.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("MixtralForCausalLM 0.32")


def test_conflicting_torch_companions_are_absent():
    # PyPI torchvision/torchaudio/torchcodec break imports beside the CPU torch build.
    import importlib.util

    for name in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None, name
