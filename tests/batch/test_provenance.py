"""Resume provenance, one writer per output, ids counted once, BOS not doubled.

`mofe batch` through its CLI with the transformers backend on the kit's models (starts in
seconds); the same checks through the vLLM engine are in test_engine.py, and concurrent real
subprocesses in test_resume.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mofe_batch.cli import batch_cli
from mofe_batch.provenance import OutputLock

from .conftest import write_jsonl

pytestmark = pytest.mark.slow


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"q{i}", "question": f"Which organ filters blood? ({i})", "opa": "kidney",
             "opb": "skin", "opc": "bone", "opd": "hair", "cop": i % 4,
             "subject_name": "Anatomy"} for i in range(start, start + n)]


def _invoke(model: Path, src: Path, out: Path, *extra: str):
    return CliRunner().invoke(batch_cli, [
        str(model), "--task", "medmcqa", "--input", str(src), "--output", str(out),
        "--backend", "hf", "--dtype", "float32", "--no-progress", *extra])


@pytest.fixture
def scored(kit, tmp_path) -> tuple[Path, Path]:
    src = write_jsonl(tmp_path / "in.jsonl", _rows(6))
    out = tmp_path / "out.jsonl"
    result = _invoke(kit / "base", src, out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return src, out


def test_output_records_what_produced_it(kit, scored):
    _, out = scored
    record = json.loads(Path(str(out) + ".provenance.json").read_text())
    assert record["model"] == "base" and len(record["model_sha256"]) == 64
    assert {k: record[k] for k in ("task", "shots", "template", "chat_template", "dtype",
                                   "backend", "cop_base")} == {
        "task": "medmcqa", "shots": 0, "template": "lm-eval default", "chat_template": False,
        "dtype": "float32", "backend": "hf", "cop_base": 0}
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["provenance"] == record
    assert not Path(str(out) + ".lock").exists()  # released and removed on exit


@pytest.mark.parametrize("extra,names", [
    (["--dtype", "bfloat16"], ["dtype: 'float32' (in the output) vs 'bfloat16' (this run)"]),
    (["--chat-template"], ["chat_template: False (in the output) vs True (this run)"]),
    (["--template", "Q: {{ question }}\nAnswer:"], ["template: 'lm-eval default'"]),
    (["--shots", "1", "--dev", "DEV"], ["shots: 0 (in the output) vs 1 (this run)",
                                        "shot_seed: None (in the output) vs 1234"]),
    (["--cop-base", "1"], ["cop_base: 0 (in the output) vs 1 (this run)"]),
])
def test_rerun_with_other_settings_is_refused_naming_the_difference(kit, scored, tmp_path,
                                                                    extra, names):
    src, out = scored
    dev = write_jsonl(tmp_path / "dev.jsonl", _rows(3, start=100))
    extra = [str(dev) if e == "DEV" else e for e in extra]
    before = out.read_bytes()
    result = _invoke(kit / "base", src, out, *extra)
    assert result.exit_code == 1, result.output
    assert "was produced with different settings" in result.output
    for name in names:
        assert name in result.output
    assert out.read_bytes() == before


def test_rerun_with_another_model_is_refused_by_content_hash(kit, scored, tmp_path):
    src, out = scored
    other = tmp_path / "other"  # the kit base with one weight file byte changed
    other.mkdir()
    for f in (kit / "base").iterdir():
        data = f.read_bytes()
        if f.suffix == ".safetensors":
            data = data[:-1] + bytes([data[-1] ^ 1])
        (other / f.name).write_bytes(data)
    result = _invoke(other, src, out)
    assert result.exit_code == 1 and "model_sha256: '" in result.output, result.output
    # The same bytes under another path are the same model: that resumes.
    same = tmp_path / "copy"
    same.mkdir()
    for f in (kit / "base").iterdir():
        (same / f.name).write_bytes(f.read_bytes())
    result = _invoke(same, src, out)
    assert result.exit_code == 0 and "6 resumed" in result.output, result.output


def test_output_without_a_provenance_record_is_refused(kit, scored):
    src, out = scored
    Path(str(out) + ".provenance.json").unlink()
    result = _invoke(kit / "base", src, out)
    assert result.exit_code == 1 and "no out.jsonl.provenance.json" in result.output


def test_an_id_is_counted_once_in_the_report(kit, scored):
    src, out = scored
    lines = out.read_text().splitlines()
    with open(out, "a") as fh:  # as if two writers had both written q-rows
        fh.write(lines[0] + "\n" + lines[3] + "\n")
    result = _invoke(kit / "base", src, out)
    assert result.exit_code == 0, result.output
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["resumed"] == 6 and report["scored_this_run"] == 0
    assert report["overall"]["n"] == 6 and report["subjects"]["Anatomy"]["n"] == 6
    assert report["duplicate_rows_ignored"] == 2
    assert "2 duplicate result lines ignored" in Path(str(out) + ".report.md").read_text()


def test_a_second_run_on_a_locked_output_is_refused(kit, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", _rows(2))
    out = tmp_path / "out.jsonl"
    with OutputLock(out):  # another run holds it
        result = _invoke(kit / "base", src, out)
        assert result.exit_code == 1
        assert "another mofe batch run" in result.output and "is writing" in result.output
        assert not out.exists()
    result = _invoke(kit / "base", src, out)  # released: runs
    assert result.exit_code == 0, result.output


@pytest.fixture
def bos_model(kit, tmp_path) -> Path:
    """The kit base with a tokenizer that adds BOS and a chat template that writes it too
    (as Llama-2/Mistral-style tokenizers do)."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    model = tmp_path / "bos-model"
    model.mkdir()
    for f in (kit / "base").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    raw = Tokenizer.from_file(str(model / "tokenizer.json"))
    bos_id = raw.token_to_id("<s>")
    raw.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                            special_tokens=[("<s>", bos_id)])
    raw.save(str(model / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n"
                         "{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok.save_pretrained(model)
    return model


def test_chat_template_that_writes_bos_does_not_double_it(bos_model):
    from transformers import AutoTokenizer

    from mofe_batch.prompts import PromptBuilder
    from mofe_batch.scoring import build_item, encode_pair
    from mofe_batch.tasks import parse_row

    tok = AutoTokenizer.from_pretrained(bos_model)
    bos = tok.bos_token_id
    assert tok("Question")["input_ids"][0] == bos  # the tokenizer adds BOS ...
    q = parse_row("medmcqa", _rows(1)[0], 1)
    context = PromptBuilder("medmcqa", chat_tokenizer=tok).context(q)
    assert context.startswith(tok.bos_token)  # ... and the chat template writes it
    item = build_item(tok, context, [" A", " B", " C", " D"])
    # lm-eval: the rendered chat text tokenized without adding special tokens again (its
    # trailing newline moves onto the continuation, as in lm-eval's _encode_pair)
    assert item.context == tok(context.rstrip(), add_special_tokens=False)["input_ids"]
    assert item.context[0] == bos and item.context[1] != bos
    assert item.context.count(bos) == 1
    ctx, cont = encode_pair(tok, context, " A")
    assert ctx == item.context and cont == item.continuations[0]
    # Without the chat template the tokenizer's own BOS is still there, once.
    plain = build_item(tok, PromptBuilder("medmcqa").context(q), [" A", " B"])
    assert plain.context[0] == bos and plain.context.count(bos) == 1


def test_chat_template_scoring_through_the_cli_has_one_bos(bos_model, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", _rows(2))
    out = tmp_path / "out.jsonl"
    result = _invoke(bos_model, src, out, "--chat-template")
    assert result.exit_code == 0, result.output
    from transformers import AutoTokenizer

    from mofe_batch.prompts import PromptBuilder
    from mofe_batch.tasks import parse_row

    tok = AutoTokenizer.from_pretrained(bos_model)
    for row, q in zip(sorted(map(json.loads, out.read_text().splitlines()),
                             key=lambda r: r["position"]), _rows(2), strict=True):
        context = PromptBuilder("medmcqa", chat_tokenizer=tok).context(
            parse_row("medmcqa", q, 1))
        ctx = tok(context.rstrip(), add_special_tokens=False)["input_ids"]
        conts = [tok(context + c, add_special_tokens=False)["input_ids"][len(ctx):]
                 for c in (" A", " B", " C", " D")]
        single = all(len(c) == 1 for c in conts)
        want = len(ctx) if single else sum(len(ctx) + len(c) for c in conts)
        assert row["num_tokens"] == want  # one BOS: the template's
