"""Training holds one copy of the frozen experts: the structure, at a reduced but
proportional shape (docs/training.md#precision-and-memory).

Random dense bf16 experts shaped like TinyLlama at 1/8 width (hidden 256, intermediate 704,
4 layers, 4 experts) are merged by mergekit and trained by the real `run_training`. Memory
is judged from tensor data pointers, dtypes and file contents, never from timings: every
expert parameter keeps the storage it was loaded into, in bf16, frozen, through training
and the final save; the optimizer is gone before the save; Trainer's checkpoints hold only
the trainable tensors; the save writes every expert tensor from the merged file, none from
memory. The paper-shape figures (peak RSS) are benchmarks/paper_shape.py's.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
from transformers import TrainerCallback

from model_registry.checkpoint import expert_hashes, read_all_headers
from model_registry.manifest import Manifest
from training import save as save_mod
from training import train as train_mod
from training.config import load_config
from training.kit import KitSizes
from training.methods import is_expert_param
from training.test_models import build_random_experts

# TinyLlama's proportions at 1/8 width (head_dim 64 as TinyLlama, intermediate = 2.75 x hidden)
SMALL = KitSizes(vocab_size=4000, hidden_size=256, intermediate_size=704, num_layers=4,
                 num_heads=4, num_kv_heads=1, max_positions=512)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    return build_random_experts(tmp_path_factory.mktemp("small-experts"), SMALL)


def _experts(model) -> dict[str, object]:
    return {n: p for n, p in model.named_parameters() if is_expert_param(n)}


class _Watch(TrainerCallback):
    """Checks made inside the run: pointers at every step, checkpoint contents at each save."""

    def __init__(self, loaded: dict[str, int]) -> None:  # filled at load time
        self.loaded = loaded
        self.steps = 0
        self.saved: list[set[str]] = []
        self.optimizer = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        assert {n: p.data_ptr() for n, p in _experts(model).items()} == self.loaded
        self.steps += 1

    def on_save(self, args, state, control, model=None, **kwargs):
        from safetensors import safe_open

        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        assert not list(ckpt.glob("model*.safetensors"))  # no full-model copy
        with safe_open(str(ckpt / save_mod.TRAINABLE_FILE), "pt") as fh:
            self.saved.append(set(fh.keys()))

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = weakref.ref(optimizer)


@pytest.fixture(scope="module")
def trained(small_config: Path, tmp_path_factory):
    """One instrumented `run_training`: (output, merged checkpoint, what was seen inside)."""
    tmp = tmp_path_factory.mktemp("small-run")
    cfg = load_config(small_config, [f"output_dir={tmp / 'out'}", "training.save_every=1",
                                     f"merge.output={tmp / 'merged'}"])
    seen = {"loaded": {}, "trainable": set(), "reports": [], "at_save": []}
    watch = _Watch(seen["loaded"])
    real_load, real_save = train_mod.load_for_training, train_mod.save_weights

    def load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        seen["dtypes"] = {n: str(p.dtype) for n, p in model.named_parameters()}
        seen["loaded"].update({n: p.data_ptr() for n, p in _experts(model).items()})
        return model

    def save(model, source, dst, copy_experts):
        experts = _experts(model)
        seen["at_save"].append({
            "optimizer_alive": watch.optimizer is None or watch.optimizer() is not None,
            "pointers": {n: p.data_ptr() for n, p in experts.items()},
            "frozen": all(not p.requires_grad for p in experts.values())})
        seen["trainable"].update(n for n, p in model.named_parameters() if p.requires_grad)
        seen["reports"].append(real_save(model, source, dst, copy_experts))
        return seen["reports"][-1]

    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "load_for_training", load)
    mp.setattr(train_mod, "save_weights", save)
    try:
        out = train_mod.run_training(cfg, callbacks=[watch])
    finally:
        mp.undo()
    return out, tmp / "merged", seen, watch


def test_training_keeps_one_bf16_copy_of_the_experts(trained):
    out, merged, seen, watch = trained
    loaded = seen["loaded"]
    assert loaded and watch.steps == 2  # _Watch checked the pointers after every step
    experts = {n: d for n, d in seen["dtypes"].items() if n in loaded}
    assert set(experts.values()) == {"torch.bfloat16"}  # the stored dtype, as loaded
    assert {d for n, d in seen["dtypes"].items() if n not in loaded} == {"torch.float32"}
    [at_save] = seen["at_save"]
    assert at_save["pointers"] == loaded and at_save["frozen"]
    assert not at_save["optimizer_alive"]  # AdamW state freed before the final save
    assert watch.saved == [seen["trainable"]] * 2  # Trainer checkpoints: trainable only

    # every expert tensor of the result came from the merged file, none from memory
    [report] = seen["reports"]
    stored = read_all_headers(out)
    expert_names = {n for n in stored if save_mod.is_stored_expert(n)}
    linked = {n for n in expert_names if stored[n].file.name in report.linked}
    assert expert_names and expert_names <= set(report.streamed) | linked
    assert not expert_names & set(report.from_model)
    assert {n: (t.dtype, t.shape) for n, t in stored.items()} == {
        n: (t.dtype, t.shape) for n, t in read_all_headers(merged).items()}
    assert expert_hashes(out) == expert_hashes(merged)
    m = Manifest.load(out)
    assert m.dtype == "bfloat16" and m.training.trainable_params.experts == 0


def test_written_files_are_world_readable(trained):
    """save_pretrained's modes (0644): a server running as another user reads them."""
    out, merged, _, _ = trained
    for ckpt in (merged, out):
        assert ckpt.stat().st_mode & 0o777 == 0o755
        modes = {p.name: p.stat().st_mode & 0o777 for p in ckpt.iterdir()}
        assert {"mofe.json", "config.json"} <= modes.keys()
        assert set(modes.values()) == {0o644}, modes


def test_progress_log_has_loss_learning_rate_and_eta(trained):
    out = trained[0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all({"learning_rate", "eta_s", "elapsed_s", "max_steps"} <= r.keys() for r in steps)
    assert steps[-1]["eta_s"] == 0.0 and steps[0]["eta_s"] >= 0.0


def test_files_holding_only_experts_are_hard_linked(merged: Path, tmp_path: Path):
    """A merged checkpoint whose experts sit in their own weight file (any sharding a tool
    chose): the save links that file instead of writing it, and writes the rest from the
    model. Same names, dtypes and bytes as the source where nothing was trained."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    src = tmp_path / "split"
    src.mkdir()
    for f in merged.iterdir():
        if f.suffix != ".safetensors":
            (src / f.name).write_bytes(f.read_bytes())
    state = load_file(str(merged / "model.safetensors"))
    files = {"model-00001-of-00002.safetensors": {n: t for n, t in state.items()
                                                  if save_mod.is_stored_expert(n)},
             "model-00002-of-00002.safetensors": {n: t for n, t in state.items()
                                                  if not save_mod.is_stored_expert(n)}}
    for name, part in files.items():
        save_file(part, str(src / name), metadata={"format": "pt"})
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in files.items() for n in part}}))

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(1.0)  # "trained"
    out = tmp_path / "out"
    report = save_mod.save_weights(model, src, out, copy_experts=True)

    experts_file, rest_file = sorted(files)
    assert report.linked == [experts_file] and not report.streamed
    assert (out / experts_file).stat().st_ino == (src / experts_file).stat().st_ino
    assert set(report.from_model) == set(files[rest_file])
    saved = load_file(str(out / rest_file))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(saved[q], state[q] + 1.0)
    assert all(torch.equal(saved[n], t) for n, t in files[rest_file].items() if n != q)
    assert (out / "model.safetensors.index.json").is_file()
