"""Lineage: trained version -> merged parent -> source experts and base, with registered marks."""

from __future__ import annotations

from rich.console import Console

from model_registry.lineage import expert_digest, lineage
from model_registry.manifest import ModelSource
from model_registry.render import lineage_tree
from training.test_models import manifest_for, write_mixtral


def test_lineage_marks_registered_sources(registry, kit, copy_of, tmp_path):
    registry.register(kit.base, "tiny-base")
    registry.register(kit.experts[0], "med-expert")  # found by its registered source path
    registry.register(copy_of(kit.experts[1], "elsewhere"), "gen-expert")  # found by hash
    registry.register(kit.fused, "moe-merged")
    trained = write_mixtral(tmp_path / "trained", kit.experts, "fused", seed=7, manifest=False)
    m = manifest_for(kit.experts, base=kit.base)
    m.parent = ModelSource(source=str(kit.fused))
    m.save(trained)
    registry.register(trained, "moe", aliases=["prod"])

    node = lineage(registry, "moe@prod")
    assert node["ref"] == "moe@1" and node["frozen_check"] == "passed"
    assert (node["parent"]["registered"], node["parent"]["matched_by"]) == ("moe-merged@1", "path")
    assert node["parent"]["lineage"]["ref"] == "moe-merged@1"
    assert node["base_model"]["registered"] == "tiny-base@1"
    experts = node["experts"]
    assert [(e["registered"], e["matched_by"]) for e in experts] == [
        ("med-expert@1", "path"), ("gen-expert@1", "hash"), (None, None), (None, None)]
    assert [e["domain"] for e in experts] == ["medical", "general", "medical", "general"]
    assert experts[2]["digest"] == expert_digest(registry.meta.expert_hashes("moe", 1)[2])
    assert all(e["manifest_hashes"] == "match" for e in experts)
    # the merged parent's experts are the same tensors: same digests
    assert [e["digest"] for e in node["parent"]["lineage"]["experts"]] == \
        [e["digest"] for e in experts]

    console = Console(width=200, record=True)
    console.print(lineage_tree(node))
    text = console.export_text()
    assert "parent (merged):" in text and "registered as moe-merged@1 (by path)" in text
    assert "registered as gen-expert@1 (by hash)" in text
    assert text.count("(not registered)") == 4  # experts 2 and 3, under moe@1 and its parent


def test_lineage_without_manifest(registry, kit):
    registry.register(kit.bare, "moe")
    assert lineage(registry, "moe")["note"].startswith("no mofe.json")
