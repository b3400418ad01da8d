"""Config schema: shipped YAMLs validate, overrides coerce types, bad keys name themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from training.cli import merge_cli, train_cli
from training.config import ConfigError, RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_exist():
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates_and_names_its_command(path: Path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# mofe ") and path.name in first
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_kit_config_validates(kit: Path):
    assert (kit / "mofe.yaml").read_text().startswith("# mofe train ")
    cfg = load_config(kit / "mofe.yaml")
    assert cfg.merge is not None and len(cfg.merge.experts) == 4
    assert Path(cfg.merge.base_model.source) == kit / "base"  # relative to the YAML


def test_override_types_and_lists(tmp_path: Path, kit: Path):
    cfg = load_config(kit / "mofe.yaml", ["training.max_steps=7", "training.learning_rate=1e-3",
                                          "data.skip_malformed=true", "method=lora",
                                          "merge.experts.1.domain=travel",
                                          f"output_dir={tmp_path / 'x'}"])
    assert cfg.training.max_steps == 7 and isinstance(cfg.training.max_steps, int)
    assert cfg.training.learning_rate == pytest.approx(1e-3)
    assert cfg.data.skip_malformed is True and cfg.method == "lora"
    assert cfg.merge.experts[1].domain == "travel"
    with pytest.raises(ConfigError, match="not an index"):
        load_config(kit / "mofe.yaml", ["merge.experts.9.domain=x"])
    with pytest.raises(ConfigError, match="training.max_steps"):
        load_config(kit / "mofe.yaml", ["training.max_steps=many"])


def _write(tmp_path: Path, kit: Path, mutate) -> Path:
    raw = yaml.safe_load((kit / "mofe.yaml").read_text())
    raw["output_dir"] = str(tmp_path / "out")
    raw["merge"]["output"] = str(tmp_path / "merged")
    for e in raw["merge"]["experts"]:
        e["source"] = str(kit / e["source"])
    raw["merge"]["base_model"] = str(kit / raw["merge"]["base_model"])
    raw["data"]["train"][0]["path"] = str(kit / raw["data"]["train"][0]["path"])
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _assert_nothing_written(tmp_path: Path):
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "bad.yaml")
    assert left == [], left


def test_unknown_key_is_named_with_the_file(tmp_path: Path, kit: Path):
    path = _write(tmp_path, kit, lambda r: r["training"].update(lerning_rate=0.1))
    result = CliRunner().invoke(train_cli, [str(path)])
    assert result.exit_code == 1
    assert str(path) in result.output and "training.lerning_rate: unknown key" in result.output
    _assert_nothing_written(tmp_path)


def test_top_k_above_experts_is_rejected(tmp_path: Path, kit: Path):
    path = _write(tmp_path, kit, lambda r: r["merge"].update(experts_per_token=5))
    result = CliRunner().invoke(merge_cli, [str(path), str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "experts_per_token (5) is larger than the number of experts (4)" in result.output
    _assert_nothing_written(tmp_path)


def test_aux_loss_needs_sparse_routing(tmp_path: Path, kit: Path):
    def mutate(r):
        r["merge"]["experts"] = r["merge"]["experts"][:2]
        r["training"]["router_aux_loss_coef"] = 0.01
    result = CliRunner().invoke(train_cli, [str(_write(tmp_path, kit, mutate))])
    assert result.exit_code == 1 and "router_aux_loss_coef needs more experts" in result.output
    _assert_nothing_written(tmp_path)
