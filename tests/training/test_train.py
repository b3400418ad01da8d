"""`mofe train` end to end: MoFE keeps experts bit-identical, full does not, LoRA/DoRA merge."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from train_helpers import mofe, train_args

from model_registry.checkpoint import read_all_headers, vllm_loadable
from model_registry.manifest import Manifest
from training.cli import train_cli


def test_mofe_run_verifies_and_records_everything(mofe_ckpt: Path, kit: Path, merged: Path):
    proc = mofe("verify", str(mofe_ckpt))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "identical" in proc.stdout and "changed" not in proc.stdout
    assert vllm_loadable(mofe_ckpt)
    assert not Path(f"{mofe_ckpt}.work").exists()  # Trainer's checkpoints are cleaned up
    m = Manifest.load(mofe_ckpt)
    assert m.freeze.method == "mofe" and m.parent.source == str(merged)
    t = m.training
    assert t.method == "mofe" and t.steps == 20 and t.seed == 0
    assert math.isfinite(t.final_train_loss) and math.isfinite(t.final_eval_loss)
    assert t.data_files == {str(kit / "data" / "instruct.jsonl"): pytest.approx(t.data_files[
        str(kit / "data" / "instruct.jsonl")])}
    p = t.trainable_params
    assert p.experts == 0 and p.adapters == 0
    assert p.embed == m.params.embed and p.attention == m.params.attention > 0
    assert p.router == m.params.router > 0 and p.lm_head > 0 and p.norms > 0
    assert m.params.experts > 0 and p.trainable == m.params.total - m.params.experts
    # training changed what it should: router and attention differ from the merged model
    assert _tensor(mofe_ckpt, "model.layers.0.block_sparse_moe.gate.weight") != _tensor(
        merged, "model.layers.0.block_sparse_moe.gate.weight")
    log = [json.loads(line) for line in (mofe_ckpt / "metrics.jsonl").open()]
    assert any("eval_loss" in r for r in log) and any("loss" in r for r in log)


def _tensor(ckpt: Path, name: str) -> bytes:
    info = read_all_headers(ckpt)[name]
    with open(info.file, "rb") as fh:
        fh.seek(info.start)
        return fh.read(info.end - info.start)


def test_full_finetune_is_rejected_by_verify(kit: Path, merged: Path, tmp_path: Path):
    out = tmp_path / "full"
    result = CliRunner().invoke(train_cli, train_args(kit, merged, out, "method=full",
                                                      "training.max_steps=3")[1:])
    assert result.exit_code == 0, result.output
    proc = mofe("verify", str(out))
    assert proc.returncode != 0
    named = re.findall(r"expert (\d) \((?:medical|general)\) layer (\d) (w[123]): checkpoint "
                       r"tensor differs", proc.stdout)
    # every trained tensor is named (an expert no token was routed to may keep a few)
    assert len(named) >= 24 and {e for e, _, _ in named} == {"0", "1", "2", "3"}
    assert f"{len(named)} expert tensors do not match" in proc.stderr
    assert Manifest.load(out).training.trainable_params.experts > 0


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_and_dora_merge_into_a_full_checkpoint(method, kit, merged, tmp_path: Path):
    out = tmp_path / method
    result = CliRunner().invoke(train_cli, train_args(kit, merged, out, f"method={method}",
                                                      "training.max_steps=3")[1:])
    assert result.exit_code == 0, result.output
    p = Manifest.load(out).training.trainable_params
    assert p.adapters > 0 and p.trainable == p.adapters and p.experts == 0
    names = set(read_all_headers(out))
    assert names == set(read_all_headers(merged))  # no adapter tensors left: merged in
    q = "model.layers.0.self_attn.q_proj.weight"
    assert _tensor(out, q) != _tensor(merged, q)  # the adapter update landed in the weights


def test_generates_text_in_transformers(mofe_ckpt: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mofe_ckpt)
    model = AutoModelForCausalLM.from_pretrained(mofe_ckpt, dtype=torch.float32)
    msgs = [{"role": "user", "content": "What is heparin used for?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:]
    assert len(new) >= 1 and tok.decode(new, skip_special_tokens=True).strip()


def test_existing_output_is_refused(mofe_ckpt: Path, kit, merged):
    before = (mofe_ckpt / "mofe.json").read_bytes()
    result = CliRunner().invoke(train_cli, train_args(kit, merged, mofe_ckpt)[1:])
    assert result.exit_code == 1 and "already exists" in result.output
    assert (mofe_ckpt / "mofe.json").read_bytes() == before


def test_router_aux_loss_trains_and_is_recorded(kit, merged, mofe_ckpt, tmp_path: Path):
    out = tmp_path / "aux"
    result = CliRunner().invoke(train_cli, train_args(
        kit, merged, out, "training.router_aux_loss_coef=0.02", "training.max_steps=2")[1:])
    assert result.exit_code == 0, result.output
    m = Manifest.load(out)
    assert m.training.config["training"]["router_aux_loss_coef"] == 0.02
    assert json.loads((out / "config.json").read_text())["output_router_logits"] is False

    def first_loss(ckpt: Path) -> float:
        rows = [json.loads(line) for line in (ckpt / "metrics.jsonl").open()]
        return next(r["loss"] for r in rows if r["step"] == 1 and "loss" in r)

    # same seed, data and first batch: the only difference at step 1 is coef * aux loss
    assert first_loss(out) > first_loss(mofe_ckpt) + 1e-3
