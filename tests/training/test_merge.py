"""Merging with mergekit: manifest contents, layout, and clear errors that write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_registry.checkpoint import expert_hashes, read_all_headers, vllm_loadable
from model_registry.manifest import Manifest
from training.config import load_config
from training.merge import merge_experts
from training.sources import MergeError


def test_merged_checkpoint_is_vllm_layout_with_source_hashes(merged: Path, kit: Path):
    assert vllm_loadable(merged)
    m = Manifest.load(merged)
    assert (m.num_experts, m.top_k, m.num_layers, m.dtype) == (4, 2, 4, "float32")
    assert m.merge.gate_mode == "hidden" and m.merge.mergekit_version == "0.1.5"
    assert m.base_model.source == str(kit / "base")
    assert [e.domain for e in m.experts] == ["medical", "general", "medical", "general"]
    on_disk = expert_hashes(merged)
    for e in m.experts:
        assert e.source == str(kit / "experts" / Path(e.source).name)
        assert len(e.sha256) == 4 * 3 and on_disk[e.index] == e.sha256
    # distinct experts really are distinct tensors
    assert len({e.sha256["0.w1"] for e in m.experts}) == 4
    assert "model.layers.0.block_sparse_moe.gate.weight" in read_all_headers(merged)


def _merge_cfg(kit: Path, *sets: str):
    return load_config(kit / "mofe.yaml", list(sets)).merge


def _nothing_written(parent: Path):
    assert sorted(p.name for p in parent.iterdir()) == []


def test_incompatible_expert_fails_before_merging(kit: Path, tmp_path: Path):
    odd = tmp_path / "src" / "odd"
    shutil.copytree(kit / "experts" / "cooking", odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["hidden_size"] = 256
    (odd / "config.json").write_text(json.dumps(cfg))
    out_parent = tmp_path / "o"
    out_parent.mkdir()
    with pytest.raises(MergeError, match=r"expert 3 \(general\).*hidden_size is 256 but the base "
                                         r"has 128"):
        merge_experts(_merge_cfg(kit, f"merge.experts.3.source={odd}"), out_parent / "m")
    _nothing_written(out_parent)


def test_missing_path_and_unreachable_hub_id(kit: Path, tmp_path: Path):
    with pytest.raises(MergeError, match="does not exist"):
        merge_experts(_merge_cfg(kit, f"merge.experts.0.source={tmp_path}/nope"), tmp_path / "m")
    with pytest.raises(MergeError, match="hub model|cannot fetch config.json"):
        merge_experts(_merge_cfg(kit, "merge.experts.0.source=no-such-org/no-such-model"),
                      tmp_path / "m")
    _nothing_written(tmp_path)


def test_mergekit_sys_exit_becomes_an_exception(kit: Path, tmp_path: Path):
    """Identical prompts for every expert: mergekit logs a reason and calls sys.exit(1)."""
    sets = []
    for i in range(4):
        sets += [f"merge.experts.{i}.positive_prompts=[same prompt]",
                 f"merge.experts.{i}.negative_prompts=[]"]
    with pytest.raises(MergeError, match="mergekit refused the merge: .*prompts are identical"):
        merge_experts(_merge_cfg(kit, *sets), tmp_path / "m")
    _nothing_written(tmp_path)


def test_duplicate_expert_and_existing_output(kit: Path, merged: Path, tmp_path: Path):
    dup = f"merge.experts.1.source={kit / 'experts' / 'pharmacology'}"
    with pytest.raises(MergeError, match="listed twice"):
        merge_experts(_merge_cfg(kit, dup), tmp_path / "m")
    with pytest.raises(MergeError, match="already exists"):
        merge_experts(_merge_cfg(kit), merged)


def test_cheap_embed_and_random_gate_modes_via_cli(kit: Path, tmp_path: Path):
    from click.testing import CliRunner

    from training.cli import merge_cli

    for mode in ("cheap_embed", "random"):
        result = CliRunner().invoke(merge_cli, [str(kit / "mofe.yaml"), str(tmp_path / mode),
                                                "--set", f"merge.gate_mode={mode}"])
        assert result.exit_code == 0, result.output
        m = Manifest.load(tmp_path / mode)
        assert m.merge.gate_mode == mode and vllm_loadable(tmp_path / mode)
    routers = [read_all_headers(tmp_path / mode)["model.layers.1.block_sparse_moe.gate.weight"]
               for mode in ("cheap_embed", "random")]
    assert routers[0].shape == routers[1].shape == (4, 128)


def test_convert_cli_writes_vllm_layout(merged: Path, tmp_path: Path):
    from click.testing import CliRunner

    from training.cli import convert_cli

    result = CliRunner().invoke(convert_cli, [str(merged), str(tmp_path / "conv")])
    assert result.exit_code == 0, result.output
    assert vllm_loadable(tmp_path / "conv")
    assert expert_hashes(tmp_path / "conv") == expert_hashes(merged)
    result = CliRunner().invoke(convert_cli, [str(tmp_path / "nope"), str(tmp_path / "c2")])
    assert result.exit_code == 1 and "no config.json" in result.output


def test_merged_tokenizer_keeps_the_base_pad_token(merged: Path, kit: Path):
    """mergekit sets the merged tokenizer's pad token to BOS; config.json said <pad>."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(kit / "base")
    tok = AutoTokenizer.from_pretrained(merged)
    config = json.loads((merged / "config.json").read_text())
    assert base.pad_token == "<pad>" and tok.pad_token == base.pad_token
    assert config["pad_token_id"] == tok.pad_token_id == base.pad_token_id
    assert tok.padding_side == base.padding_side
