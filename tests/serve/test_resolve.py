"""REF resolution: the checkpoint is served where it is, in either layout (no engine)."""

from __future__ import annotations

import os

import pytest

from model_registry.checkpoint import layout_of
from mofe_serve.resolve import resolve_served_model
from training.test_models import DOMAINS


def test_fused_checkpoint_is_served_in_place(tiny_mofe, tmp_path):
    """No conversion and no cache directory: MoFEMixtralForCausalLM reads fused weights."""
    assert layout_of(tiny_mofe) == "fused"
    before = sorted(os.listdir(tiny_mofe))
    served = resolve_served_model(str(tiny_mofe))
    assert served.path == tiny_mofe.resolve()  # served in place: no converted copy
    assert served.names == [tiny_mofe.name]
    assert served.domains == DOMAINS
    assert sorted(os.listdir(tiny_mofe)) == before


def test_registered_ref_serves_as_name_at_version(tiny_mofe, tmp_path, monkeypatch):
    monkeypatch.setenv("MOFE_REGISTRY", str(tmp_path / "registry"))
    from model_registry.registry import Registry

    with Registry() as registry:
        info = registry.register(tiny_mofe, "tiny-mofe", aliases=["prod"])
    served = resolve_served_model("tiny-mofe@prod")
    assert served.names == [f"tiny-mofe@{info.version}", "tiny-mofe@prod"]
    assert served.domains == DOMAINS
    assert layout_of(served.path) == "per_expert"  # stored content-addressed: expert shards


def test_unknown_ref_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MOFE_REGISTRY", str(tmp_path / "registry"))
    with pytest.raises(LookupError, match="nope"):
        resolve_served_model("nope@3")
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_served_model(str(tmp_path))


def test_dense_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="model_type is 'llama'"):
        resolve_served_model(str(tmp_path))


def test_cli_reports_a_bad_ref_without_starting_an_engine(tmp_path):
    from click.testing import CliRunner

    from mofe_cli.main import cli

    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "missing"), "--dtype", "float32"])
    assert result.exit_code != 0
    assert "config.json" in result.output


def test_family_flag_expands_one_ref_to_its_registry_family(tmp_path, monkeypatch):
    """`mofe serve --family REF`: the members come from the registry's family query (same
    expert tensors by canonical hash), REF as typed first; unrelated models stay out."""
    from model_registry.registry import Registry
    from mofe_serve.cli import family_members
    from training.test_models import build_format_kit, write_llama, write_mixtral

    kit = build_format_kit(tmp_path / "kit")
    monkeypatch.setenv("MOFE_REGISTRY", str(tmp_path / "registry"))
    with Registry() as reg:
        reg.register(kit.fused, "med", aliases=["prod"])
        reg.register(write_mixtral(tmp_path / "onco", kit.experts, "fused", seed=7), "onco")
        other = [*kit.experts[:3], write_llama(tmp_path / "other-expert", seed=42)]
        reg.register(write_mixtral(tmp_path / "other", other, "fused"), "other")
    assert family_members("med@prod") == ["med@prod", "onco@1"]
    assert family_members("onco") == ["onco", "med@1"]
    assert family_members("other@1") == ["other@1"]


def test_family_flag_takes_one_ref(tmp_path):
    from click.testing import CliRunner

    from mofe_serve.cli import serve_cli

    res = CliRunner().invoke(serve_cli, ["a@1", "b@1", "--family"])
    assert res.exit_code == 2 and "--family takes one REF" in res.output
