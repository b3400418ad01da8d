"""Fixtures for the deploy tests: every kustomization rendered once per session."""

from __future__ import annotations

import pytest
from deploy_support import K8S, OVERLAYS, render, write_overlay


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """name -> rendered objects, for the shipped overlays plus a GPU variant using the HPA."""
    out = {name: render(path) for name, path in OVERLAYS.items()}
    # The HPA component is an alternative to KEDA; render it in an overlay of its own.
    hpa = write_overlay(
        tmp_path_factory.mktemp("overlays") / "gpu-hpa",
        [K8S / "base"],
        [K8S / "components" / c for c in ("team-registry", "monitoring", "alerts",
                                          "autoscaling-hpa")],
        images=[{"name": "mofe-serve", "newTag": "0.1.0-cuda"}])
    out["gpu-hpa"] = render(hpa)
    return out


@pytest.fixture(scope="session")
def all_objects(rendered) -> list[dict]:
    return [obj for objs in rendered.values() for obj in objs]
