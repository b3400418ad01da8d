"""Families: versions whose expert tensors are identical, listed with what sets them apart."""

from __future__ import annotations

import json

from click.testing import CliRunner

from model_registry.cli import registry_cli
from model_registry.family import FamilyMember
from training.test_models import write_llama, write_mixtral


def _registered_family(registry, kit, tmp_path):
    registry.register(kit.fused, "moe", aliases=["prod"])
    registry.register(write_mixtral(tmp_path / "med", kit.experts, "fused", seed=7), "moe-med",
                      aliases=["prod"])
    law = write_mixtral(tmp_path / "law", kit.experts, "per_expert", seed=8, manifest=False)
    cfg = json.loads((law / "config.json").read_text())
    (law / "config.json").write_text(json.dumps(cfg | {"rope_theta": 5e5}))
    registry.register(law, "moe-law")
    # not family: one expert differs; and a dense model
    other = [*kit.experts[:3], write_llama(tmp_path / "other-expert", seed=42)]
    registry.register(write_mixtral(tmp_path / "other", other, "fused"), "moe-other")
    registry.register(kit.experts[0], "med-expert")


def test_family_lists_members_in_order_with_their_differences(registry, kit, tmp_path):
    _registered_family(registry, kit, tmp_path)
    members = registry.family("moe-med@prod")
    assert all(isinstance(m, FamilyMember) for m in members)
    assert [m.ref for m in members] == ["moe@1", "moe-law@1", "moe-med@1"]
    by = {m.ref: m for m in members}
    assert by["moe-med@1"].is_ref and by["moe-med@1"].summary == "(this REF)"
    assert by["moe@1"].aliases == ["prod"] and by["moe-med@1"].aliases == ["prod"]
    assert all(m.shared_tensors == 24 for m in members)
    # moe@1 is the same merge with another seed for the non-expert tensors: those differ
    assert by["moe@1"].differs["config"] == []
    assert "model.embed_tokens.weight" in by["moe@1"].differs["tensors"]
    assert not any(".experts." in t for t in by["moe@1"].differs["tensors"])
    assert by["moe-law@1"].differs["config"] == ["rope_theta"]
    assert "mofe.json" in by["moe-law@1"].differs["files"]  # it has none
    assert by["moe-law@1"].summary.startswith("config: rope_theta; ")
    # the family is the same seen from any member; aliases work as always
    assert [m.ref for m in registry.family("moe-law")] == [m.ref for m in members]
    assert registry.resolve("moe@prod") != registry.resolve("moe-med@prod")
    assert [m.ref for m in registry.family("moe-other")] == ["moe-other@1"]
    assert [m.ref for m in registry.family("med-expert")] == ["med-expert@1"]


def test_family_command_table_and_json(registry, backend, kit, tmp_path):
    _registered_family(registry, kit, tmp_path)
    registry.close()

    def run(*args):
        res = CliRunner().invoke(registry_cli, ["--registry", backend.location, *args])
        assert res.exit_code == 0, res.output
        return res.stdout

    table = run("family", "moe@prod")
    assert "Family of moe@1: 3 version(s) sharing 24 expert tensor(s)" in table
    assert "moe-law@1" in table and "rope_theta" in table and "(this REF)" in table
    rows = json.loads(run("family", "moe", "--json"))
    assert [r["ref"] for r in rows] == ["moe@1", "moe-law@1", "moe-med@1"]
    assert rows[0]["is_ref"] and rows[2]["aliases"] == ["prod"]
    res = CliRunner().invoke(registry_cli, ["--registry", backend.location, "family", "nope"])
    assert res.exit_code == 1 and res.stderr.startswith("error: model 'nope' is not registered")
