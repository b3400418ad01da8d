"""Fixtures for registry tests: one tiny checkpoint kit per session, a fresh registry per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from model_registry.registry import Registry
from training.test_models import FormatKit, build_format_kit


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> FormatKit:
    """Read-only: tests that modify a checkpoint copy it first (see `copy_of`)."""
    return build_format_kit(tmp_path_factory.mktemp("registry-kit"))


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    root = tmp_path / "registry"
    monkeypatch.setenv("MOFE_REGISTRY", str(root))
    reg = Registry(root)
    yield reg
    reg.close()


@pytest.fixture
def copy_of(tmp_path):
    def _copy(src: Path, name: str | None = None) -> Path:
        return Path(shutil.copytree(src, tmp_path / "copies" / (name or src.name)))
    return _copy
