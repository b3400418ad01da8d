"""Family serving without an engine: the start-up check, names, the `model` -> variant
mapping on vLLM's own request classes, and per-variant routing state and metrics.

Checkpoints are format-level Mixtrals (training/test_models.py, numpy + safetensors): the
same four source experts with different seeds for everything else make a family.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mofe_serve.family import FamilyError, build_family
from mofe_serve.resolve import resolve_served_model
from training.test_models import write_llama, write_mixtral


@pytest.fixture(scope="module")
def fam(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fam")
    experts = [write_llama(root / f"expert-{i}", seed=10 + i) for i in range(4)]
    # Same experts, other attention/embeddings/norms/router; one in the per-expert layout.
    return [write_mixtral(root / "a", experts, "fused", seed=1),
            write_mixtral(root / "b", experts, "per_expert", seed=2),
            write_mixtral(root / "c", experts, "fused", seed=3)]


def _family(paths: list[Path]):
    refs = [str(p) for p in paths]
    return build_family([resolve_served_model(r) for r in refs], refs)


def test_same_experts_any_layout_is_a_family(fam):
    family = _family(fam)
    assert family.display_names == ["a", "b", "c"]
    assert family.variant_of("b") == 1 and family.variant_of("z") is None


def test_first_differing_expert_and_layer_is_named(fam, tmp_path):
    from safetensors.numpy import load_file, save_file

    other = tmp_path / "d"
    shutil.copytree(fam[1], other)  # per-expert layout
    weights = other / "model.safetensors"
    tensors = load_file(str(weights))
    for name in ("model.layers.1.block_sparse_moe.experts.3.w2.weight",
                 "model.layers.0.block_sparse_moe.experts.2.w1.weight"):
        tensors[name] = tensors[name] + np.float32(1e-3)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(FamilyError, match=r"expert 2 of layer 0 \(w1\) differs"):
        _family([fam[0], other])


def test_other_architecture_or_tokenizer_is_refused(fam, tmp_path):
    wider = tmp_path / "wider"
    shutil.copytree(fam[2], wider)
    cfg = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**cfg, "num_experts_per_tok": 1}))
    with pytest.raises(FamilyError, match="num_experts_per_tok is 1"):
        _family([fam[0], wider])
    other_tok = tmp_path / "tok"
    shutil.copytree(fam[2], other_tok)
    (other_tok / "tokenizer.json").write_text('{"version": "2.0"}')
    with pytest.raises(FamilyError, match="tokenizer.json differs"):
        _family([fam[0], other_tok])


def test_a_name_served_twice_is_refused(fam):
    with pytest.raises(FamilyError, match="both served as 'a'"):
        _family([fam[0], fam[1], fam[0]])


def test_cli_refuses_before_any_engine(fam, tmp_path):
    from mofe_serve.cli import _leading_refs, serve_cli

    assert _leading_refs("a", ["b", "c", "--dtype", "float32", "d"]) == (
        ["a", "b", "c"], ["--dtype", "float32", "d"])
    result = CliRunner().invoke(serve_cli, [str(fam[0]), str(fam[1]),
                                            "--served-model-name", "x"])
    assert result.exit_code != 0 and "--served-model-name applies to one REF" in result.output


def test_model_field_sets_the_variant_and_overrides_the_client(fam):
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from mofe_serve.engine import VARIANT_ARG
    from mofe_serve.family_serving import _REQUEST_VARIANT, _set_variant

    family = _family(fam)
    request = CompletionRequest(model="c", prompt="hi", vllm_xargs={VARIANT_ARG: 0, "x": 1})
    _set_variant(request, family)
    params = request.to_sampling_params(4, {})
    assert params.extra_args == {VARIANT_ARG: 2, "x": 1}
    assert _REQUEST_VARIANT.get() == "c"


def test_routing_per_variant_state_api_and_metrics():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from mofe_serve.metrics import RoutingCollector
    from mofe_serve.routing.serving import RoutedModel, ServingRouting, UnknownModel
    from mofe_serve.routing.state import VariantRoutingStates

    states = VariantRoutingStates(2, num_layers=1, num_experts=2, top_k=1)
    snap = {"num_layers": 1, "num_experts": 2, "top_k": 1, "enabled": True,
            "tokens": [[5, 7]], "gate_weight": [[5.0, 7.0]],
            "variants": [{"tokens": [[5, 0]], "gate_weight": [[5.0, 0.0]]},
                         {"tokens": [[0, 7]], "gate_weight": [[0.0, 7.0]]}]}
    states.reset_window({**snap, "variants": [{"tokens": [[1, 0]], "gate_weight": [[1., 0.]]},
                                              {"tokens": [[0, 2]], "gate_weight": [[0., 2.]]}]})
    states.update(snap)
    routed = [RoutedModel("a@1", ["a@1", "a@prod"], ["medical", "general"], states.states[0]),
              RoutedModel("b@2", ["b@2"], [], states.states[1])]

    class Poller:
        engine_client = None

    serving = ServingRouting("a@1", [], states.states[0], Poller(), models=routed,
                             states=states)
    assert serving.get("a@prod").tokens == [[4, 0]]  # window: 5 - 1
    assert serving.get("b@2").tokens == [[0, 5]]
    assert [r.model for r in serving.get().data] == ["a@1", "b@2"]
    with pytest.raises(UnknownModel):
        serving.get("c@1")
    registry = CollectorRegistry()
    registry.register(RoutingCollector.for_models([(r.name, r.domains, r.state.snapshot)
                                                   for r in routed]))
    families = {f.name: f.samples for f in
                text_string_to_metric_families(generate_latest(registry).decode())}
    tokens = {(s.labels["model"], s.labels["expert"], s.labels["domain"]): s.value
              for s in families["mofe_expert_tokens"]}
    assert tokens == {("a@1", "0", "medical"): 5, ("a@1", "1", "general"): 0,
                      ("b@2", "0", "unknown"): 0, ("b@2", "1", "unknown"): 7}


def _linear_family(num_variants: int = 3, dim: int = 8):
    import torch

    from mofe_serve.family_model import PerVariant, VariantIndex

    torch.manual_seed(0)
    index = VariantIndex(max_num_tokens=16, num_variants=num_variants)
    linears = [torch.nn.Linear(dim, dim) for _ in range(num_variants)]
    return index, linears, PerVariant(linears, index)


def test_each_token_goes_through_its_own_variant():
    import torch

    index, linears, site = _linear_family()
    x = torch.randn(7, 8)
    variant = torch.tensor([2, 0, 1, 1, 2, 0, 0])
    index.token_variant[:7] = variant
    index.token_variant[7:] = 1  # rows of earlier, larger steps: never read
    out = site(x)
    full = [linear(x) for linear in linears]  # each variant on the whole step
    for t in range(7):
        assert torch.equal(out[t], full[int(variant[t])][t])


def test_compiled_forward_reads_the_index_of_each_step():
    """The index is a buffer the worker rewrites between steps: a compiled graph must read
    its current contents (a graph input), not a constant captured at compile time."""
    import torch

    index, linears, site = _linear_family()
    compiled = torch.compile(site, fullgraph=True, dynamic=True)
    x = torch.randn(5, 8)
    with torch.no_grad():
        for step in ([0, 1, 2, 0, 1], [2, 2, 2, 2, 2], [1, 0, 2, 2, 0]):
            index.token_variant[:5] = torch.tensor(step)
            want = torch.stack([linears[v](x[t]) for t, v in enumerate(step)])
            assert torch.allclose(compiled(x), want, atol=1e-6)


def test_in_place_norm_sees_unchanged_inputs():
    """vLLM's fused add+RMSNorm updates its inputs in place: each variant gets a copy."""
    import torch

    from mofe_serve.family_model import PerVariant, VariantIndex

    class AddInPlace(torch.nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.scale = scale

        def forward(self, x, residual):
            residual.add_(x)
            return residual * self.scale, residual

    index = VariantIndex(4, 2)
    index.token_variant[:3] = torch.tensor([0, 1, 1])
    site = PerVariant([AddInPlace(1.0), AddInPlace(2.0)], index, copy_inputs=True)
    x, residual = torch.ones(3, 2), torch.ones(3, 2)
    out, res = site(x, residual)
    assert torch.equal(out, torch.tensor([[2.0, 2.0], [4.0, 4.0], [4.0, 4.0]]))
    assert torch.equal(res, torch.full((3, 2), 2.0)) and torch.equal(residual, torch.ones(3, 2))
