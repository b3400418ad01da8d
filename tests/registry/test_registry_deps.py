"""pyproject.toml declares what the project imports (model_registry's own imports in
particular), and nothing it never imports."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("model_registry", "training", "mofe_serve", "mofe_batch", "mofe_cli")
# Declared for what they do at run time, not for an import of ours:
RUNTIME_ONLY = {"accelerate": "transformers' Trainer requires it",
                "tokenizers": "fast tokenizers of transformers",
                "tqdm": "progress bars of transformers and mergekit"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in deps}


def _imported(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in PACKAGES}


def _distributions(modules: set[str]) -> set[str]:
    dists = packages_distributions()
    return {_norm(d) for m in modules for d in dists.get(m, [m])}


def test_model_registry_declares_every_import():
    assert _distributions(_imported("model_registry")) - _declared() == set()


def test_every_declared_dependency_is_used():
    used = set()
    for pkg in PACKAGES:
        used |= _distributions(_imported(pkg))
    unused = _declared() - used - set(RUNTIME_ONLY)
    assert unused == set()
