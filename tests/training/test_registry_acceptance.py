"""A checkpoint from `mofe train` registers, gets `prod`, resolves, verifies, and its lineage
shows each source expert with its domain (the registry issue's acceptance, end to end)."""

from __future__ import annotations

import json
from pathlib import Path

from train_helpers import mofe


def test_trained_checkpoint_through_the_registry(mofe_ckpt: Path, kit: Path, tmp_path: Path):
    reg = ["registry", "--registry", str(tmp_path / "registry")]
    out = mofe(*reg, "register", str(mofe_ckpt), "--name", "kit-mofe", "--alias", "prod")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "kit-mofe@1"

    resolved = mofe(*reg, "resolve", "kit-mofe@prod")
    assert resolved.returncode == 0, resolved.stderr
    path = Path(resolved.stdout.strip())
    assert path.is_dir() and (tmp_path / "registry") in path.parents
    assert json.loads((path / "mofe.json").read_text())["num_experts"] == 4

    assert mofe(*reg, "verify", "kit-mofe@prod").returncode == 0

    show = json.loads(mofe(*reg, "show", "kit-mofe@prod", "--json").stdout)
    assert "passed" in json.dumps(show).lower()  # the frozen-expert claim was checked

    lineage = mofe(*reg, "lineage", "kit-mofe@prod")
    assert lineage.returncode == 0, lineage.stderr
    for name in ("pharmacology", "geography", "anatomy", "cooking"):
        assert str(kit / "experts" / name) in lineage.stdout
    assert lineage.stdout.count("medical") >= 2 and lineage.stdout.count("general") >= 2
