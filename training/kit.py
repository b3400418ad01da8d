"""Tiny offline model kit: a tokenizer, a dense Llama base, dense domain experts and data.

Everything is built locally and deterministically from the corpus shipped in
training/corpus/ (general English and medical text written by this project), so tests,
the demo and benchmarks never touch a hub. Experts start from the base and take a few
training steps on their own topic, so their FFNs genuinely differ and hidden-state routing
has something to find.

    mofe dev tiny-experts OUT [--experts 4] [--seed 0]
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

CORPUS = Path(__file__).parent / "corpus"
SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# (expert name, domain, corpus file, line range): the order keeps any prefix balanced
TOPICS = [
    ("pharmacology", "medical", "medical.txt", (0, 260)),
    ("geography", "general", "general.txt", (0, 260)),
    ("anatomy", "medical", "medical.txt", (260, 520)),
    ("cooking", "general", "general.txt", (260, 520)),
]


@dataclass(frozen=True)
class KitSizes:
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4  # head_dim 32: the smallest vLLM's CPU attention supports
    num_kv_heads: int = 2
    max_positions: int = 512
    base_steps: int = 60
    expert_steps: int = 40
    seq_len: int = 64
    batch_size: int = 8


def build_kit(out: Path, experts: int = 4, seed: int = 0, sizes: KitSizes = KitSizes(),
              overwrite: bool = False) -> Path:
    """Write tokenizer/, base/, experts/<name>/, data/ and mofe.yaml under `out`."""
    if experts < 1:
        raise ValueError(f"--experts must be at least 1, got {experts}")
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _quiet_transformers()
    try:
        tokenizer = _train_tokenizer(tmp / "tokenizer", sizes.vocab_size)
        texts = {f: (CORPUS / f).read_text().splitlines() for f in ("medical.txt", "general.txt")}
        base = _new_llama(tokenizer, sizes, seed)
        _train_lm(base, tokenizer, texts["medical.txt"] + texts["general.txt"], sizes,
                  sizes.base_steps, seed)
        _save(base, tokenizer, tmp / "base")
        expert_specs = []
        for i in range(experts):
            name, domain, file, (lo, hi) = TOPICS[i % len(TOPICS)]
            if i >= len(TOPICS):
                name = f"{name}-{i // len(TOPICS)}"
            model = _load(tmp / "base")
            _train_lm(model, tokenizer, texts[file][lo:hi], sizes, sizes.expert_steps, seed + i + 1)
            _save(model, tokenizer, tmp / "experts" / name)
            expert_specs.append({"name": name, "domain": domain, "lines": texts[file][lo:hi]})
        _write_data(tmp / "data", seed)
        (tmp / "mofe.yaml").write_text(kit_config(out, expert_specs, seed))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def kit_config(out: Path, experts: list[dict], seed: int) -> str:
    """The kit's complete training config (schema: training/config.py RunConfig).

    Paths are relative to the YAML file's directory, so the kit can be moved or copied."""
    general = [e for e in experts if e["domain"] == "general"]
    medical = [e for e in experts if e["domain"] == "medical"]
    merge_experts = []
    for e in experts:
        others = medical if e["domain"] == "general" else general
        merge_experts.append({
            "source": f"experts/{e['name']}",
            "domain": e["domain"],
            "positive_prompts": [line.split(". ")[0] + "." for line in e["lines"][:4]],
            "negative_prompts": [line.split(". ")[0] + "." for o in others[:1]
                                 for line in o["lines"][:2]],
        })
    config = {
        "method": "mofe",
        "seed": seed,
        "output_dir": "checkpoints/mofe",
        "merge": {
            "base_model": "base",
            "output": "merged",
            "gate_mode": "hidden",
            "experts_per_token": min(2, len(experts)),
            "dtype": "float32",
            "experts": merge_experts,
        },
        "data": {"train": [{"path": "data/instruct.jsonl", "format": "chat"}],
                 "eval_fraction": 0.1, "max_length": 128},
        "training": {"max_steps": 20, "batch_size": 4, "grad_accum": 1,
                     "learning_rate": 3.0e-4, "warmup_steps": 2, "lr_scheduler": "cosine",
                     "eval_every": 10, "save_every": 10, "log_every": 1},
    }
    header = f"# mofe train {out / 'mofe.yaml'}\n"
    return header + yaml.safe_dump(config, sort_keys=False, width=100)


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _train_tokenizer(path: Path, vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train([str(CORPUS / "general.txt"), str(CORPUS / "medical.txt")],
              vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
              show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                  additional_special_tokens=SPECIAL_TOKENS[4:])
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 512
    tok.save_pretrained(path)
    return tok


def _new_llama(tokenizer, sizes: KitSizes, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size, num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads, num_key_value_heads=sizes.num_kv_heads,
        max_position_embeddings=sizes.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _train_lm(model, tokenizer, lines: list[str], sizes: KitSizes, steps: int, seed: int) -> None:
    """A few plain next-token steps; single-threaded so the bytes do not depend on cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = tokenizer("\n".join(lines), return_tensors="pt").input_ids[0]
        n = (len(ids) - 1) // sizes.seq_len * sizes.seq_len
        windows = ids[:n].view(-1, sizes.seq_len)  # [num_windows, seq_len]
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            batch = windows[torch.randint(len(windows), (sizes.batch_size,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
    finally:
        torch.set_num_threads(threads)


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _load(path: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype="float32")


def _write_data(path: Path, seed: int) -> None:
    from .kit_data import instruct_rows, medmcqa_rows

    path.mkdir(parents=True)
    facts = json.loads((CORPUS / "facts.json").read_text())
    rng = random.Random(seed)
    for name, rows in (("instruct.jsonl", instruct_rows(facts, rng)),
                       ("medmcqa.jsonl", medmcqa_rows(facts, rng))):
        with open(path / name, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")

