"""Bad checkpoints are refused with the file and field named, and nothing is left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from model_registry.errors import InvalidCheckpointError
from training.test_models import manifest_for


def _edit_config(ckpt: Path, **changes) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _assert_nothing_written(registry) -> None:
    assert registry.list_models() == []
    assert list(registry.artifacts.keys()) == []
    assert os.listdir(registry.root / "tmp") == []


@pytest.mark.parametrize("layout", ["fused", "per_expert"])
@pytest.mark.parametrize(("changes", "message"), [
    ({"hidden_size": 17}, r"model.safetensors: tensor model.embed_tokens.weight has shape "
                          r"\(64, 16\), but config.json implies \(64, 17\)"),
    ({"intermediate_size": 30}, r"tensor model.layers.0.(mlp|block_sparse_moe).experts"),
    ({"vocab_size": 65}, r"model.embed_tokens.weight .*implies \(65, 16\)"),
    ({"num_hidden_layers": 3}, r"tensor model.layers.2.* is missing"),
    ({"num_hidden_layers": 1}, r"model.layers.1.* is beyond num_hidden_layers = 1"),
    ({"num_local_experts": 3}, r"(gate_up_proj|gate.weight) has shape \(4, .*\(3, "),
    ({"num_experts_per_tok": 5}, r"num_experts_per_tok \(5\) exceeds num_local_experts \(4\)"),
    ({"hidden_size": "16"}, r"config.json: field 'hidden_size' must be a positive integer"),
    ({"model_type": "qwen2"}, r"model_type is 'qwen2'"),
])
def test_config_must_match_tensor_shapes(registry, kit, copy_of, layout, changes, message):
    ckpt = copy_of(kit.fused if layout == "fused" else kit.per_expert)
    _edit_config(ckpt, **changes)
    with pytest.raises(InvalidCheckpointError, match=message):
        registry.register(ckpt, "moe")
    _assert_nothing_written(registry)


def test_missing_expert_tensor_is_named(registry, kit, copy_of):
    ckpt = copy_of(kit.per_expert)
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(InvalidCheckpointError,
                       match=r"model.layers.1.block_sparse_moe.experts.3.w2.weight is missing"):
        registry.register(ckpt, "moe")
    _assert_nothing_written(registry)


def test_truncated_weights_are_refused(registry, kit, copy_of):
    ckpt = copy_of(kit.fused)
    weights = ckpt / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 64)
    with pytest.raises(InvalidCheckpointError, match=r"model.safetensors: tensor .* but the file has .*truncated"):
        registry.register(ckpt, "moe")
    _assert_nothing_written(registry)


def test_missing_or_broken_config(registry, kit, copy_of, tmp_path):
    with pytest.raises(InvalidCheckpointError, match=r"config.json: missing"):
        registry.register(tmp_path, "moe")
    ckpt = copy_of(kit.fused)
    (ckpt / "config.json").write_text('{"model_type": "mixtral",\n  oops}')
    with pytest.raises(InvalidCheckpointError, match=r"config.json: invalid JSON at line 2"):
        registry.register(ckpt, "moe")
    _assert_nothing_written(registry)


def test_manifest_contradicting_config_is_refused(registry, kit, copy_of):
    ckpt = copy_of(kit.per_expert)
    manifest = manifest_for(kit.experts, top_k=1)
    manifest.save(ckpt)
    with pytest.raises(InvalidCheckpointError,
                       match=r"mofe.json: manifest field top_k = 1 contradicts config.json "
                             r"num_experts_per_tok = 2"):
        registry.register(ckpt, "moe")
    (ckpt / "mofe.json").write_text('{"schema_version": 1, "experts": []}')
    with pytest.raises(InvalidCheckpointError, match=r"mofe.json: invalid manifest"):
        registry.register(ckpt, "moe")
    _assert_nothing_written(registry)


def test_dense_weights_under_a_mixtral_config_are_refused(registry, kit, copy_of):
    ckpt = copy_of(kit.experts[0])
    _edit_config(ckpt, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2)
    with pytest.raises(InvalidCheckpointError, match="says mixtral but the weights have the "
                                                     "dense layout"):
        registry.register(ckpt, "moe")
