"""Tiny offline model kit: a tokenizer, a dense Llama base, dense domain experts and data.

Everything is built locally and deterministically from training/corpus/facts.json (synthetic
facts about invented drugs, body structures, towns and dishes; see training/kit_data.py), so
tests, the demo and benchmarks never touch a hub.

The experts hold knowledge the base lacks, in their FFNs only, as MoFE assumes:
- the base learns the language of every template from "filler" entities of its own;
- each expert starts from the base and trains only its FFN (`mlp.*`) on the facts of its
  topic, stated in the `train` templates. Attention, embeddings and norms stay the base's,
  which are exactly the weights a merge takes from the base.
An expert answers questions on its topic in phrasings it never read (`heldout` templates,
data/knowledge.jsonl) far above chance; the base and the other domain's experts are at
chance (tests/test_kit.py; docs/training.md has the figures).

    mofe dev tiny-experts OUT [--experts 4] [--seed 0]
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from .kit_data import (
    base_text,
    instruct_rows,
    knowledge_rows,
    load_facts,
    medmcqa_rows,
    tokenizer_text,
    topic_text,
)

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
FFN_MARKER = ".mlp."  # the dense FFN (gate/up/down_proj): what an expert trains
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# (expert name = facts.json topic, domain): the order keeps any prefix balanced. Experts
# beyond four repeat the topics ("pharmacology-1", ...), trained with another seed.
TOPICS = [
    ("pharmacology", "medical"),
    ("geography", "general"),
    ("anatomy", "medical"),
    ("cooking", "general"),
]


@dataclass(frozen=True)
class KitSizes:
    vocab_size: int = 2048  # room for every invented name as one token
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4  # head_dim 32: the smallest vLLM's CPU attention supports
    num_kv_heads: int = 2
    max_positions: int = 512
    base_steps: int = 1000
    expert_steps: int = 600
    base_lr: float = 3e-3
    expert_lr: float = 4e-3
    expert_trains: str | None = FFN_MARKER  # None: every weight (not MoFE-shaped)
    seq_len: int = 64
    batch_size: int = 8
    expert_batch_size: int = 4
    threads: int = 2  # the base's; fixed, not the machine's count: the same bytes everywhere


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
    facts = load_facts()
    try:
        _train_tokenizer(tmp / "tokenizer", sizes.vocab_size)
        _in_children([("base", "_train_base", (tmp, sizes, seed))], workers=1,
                     threads=sizes.threads)
        expert_specs, jobs = [], []
        for i in range(experts):
            name, domain = TOPICS[i % len(TOPICS)]
            topic = name
            if i >= len(TOPICS):
                name = f"{name}-{i // len(TOPICS)}"
            lines = topic_text(facts, topic, random.Random(seed + i + 1))
            jobs.append((f"expert {name}", "_train_expert", (tmp, name, lines, sizes, seed + i + 1)))
            expert_specs.append({"name": name, "domain": domain, "lines": lines})
        _in_children(jobs, workers=2, threads=1)
        _write_data(tmp / "data", seed)
        (tmp / "mofe.yaml").write_text(kit_config(out, expert_specs, seed))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _train_base(tmp: Path, sizes: KitSizes, seed: int) -> None:
    """The base: a new Llama trained on every phrasing of the fillers' facts."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(tmp / "tokenizer")
    base = _new_llama(tokenizer, sizes, seed)
    _train_lm(base, tokenizer, base_text(load_facts(), random.Random(seed)), sizes,
              sizes.base_steps, sizes.base_lr, sizes.batch_size, seed, threads=sizes.threads)
    _save(base, tokenizer, tmp / "base")


def _train_expert(tmp: Path, name: str, lines: list[str], sizes: KitSizes, seed: int) -> None:
    """One expert: the base with only its FFN trained on `lines` (one thread)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(tmp / "tokenizer")
    model = _load(tmp / "base")
    _train_lm(model, tokenizer, lines, sizes, sizes.expert_steps, sizes.expert_lr,
              sizes.expert_batch_size, seed, only=sizes.expert_trains, threads=1)
    _save(model, tokenizer, tmp / "experts" / name)


# What `python -m training.kit JOB` may run, by name (a job travels as a pickle).
_CHILD_JOBS = {"_train_base": _train_base, "_train_expert": _train_expert}


def _in_children(jobs: list[tuple[str, str, tuple]], workers: int, threads: int) -> None:
    """Run `(label, function name, args)` jobs of this module in fresh `python -m training.kit`
    processes, up to `workers` at a time, each with `threads` torch threads.

    Fresh processes make the bytes independent of the caller's state (its torch settings,
    what it has imported). Plain subprocesses, not multiprocessing, so a caller's unguarded
    script is never re-imported.
    OMP_NUM_THREADS is set before torch starts: two children whose idle OpenMP pools spin
    against each other ran 7x slower. Experts are independent, so two one-thread children
    (twice the speed of one two-thread process on 2 cores) give the same bytes as one."""
    import os
    import pickle
    import subprocess
    import sys
    import tempfile

    workers = max(1, min(workers, len(jobs), os.cpu_count() or 1))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    pending = list(enumerate(jobs))
    running: list[tuple[str, subprocess.Popen]] = []
    with tempfile.TemporaryDirectory() as spool:
        try:
            while pending or running:
                while pending and len(running) < workers:
                    i, (label, function, args) = pending.pop(0)
                    path = Path(spool) / f"job{i}.pickle"
                    path.write_bytes(pickle.dumps((function, args)))
                    running.append((label, subprocess.Popen(
                        [sys.executable, "-m", "training.kit", str(path)], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
                label, proc = running.pop(0)
                _, err = proc.communicate()
                if proc.returncode:
                    raise RuntimeError(f"training the kit's {label} failed (exit "
                                       f"{proc.returncode}):\n"
                                       f"{err.decode(errors='replace')[-2000:]}")
        finally:  # an error or ^C: no child keeps writing into the folder being removed
            for _, other in running:
                other.kill()
                other.wait()


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
            "positive_prompts": e["lines"][:4],
            "negative_prompts": [line for o in others[:1] for line in o["lines"][:2]],
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
    bpe.train_from_iterator(tokenizer_text(load_facts()), vocab_size=vocab_size,
                            min_frequency=2, special_tokens=SPECIAL_TOKENS,
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


def _train_lm(model, tokenizer, lines: list[str], sizes: KitSizes, steps: int, lr: float,
              batch_size: int, seed: int, only: str | None = None,
              threads: int | None = None) -> None:
    """Plain next-token steps on windows of `lines`; with `only`, just the parameters whose
    name contains it train. A fixed thread count, so the bytes do not depend on cores."""
    import torch

    caller_threads = torch.get_num_threads()
    torch.set_num_threads(threads or sizes.threads)
    try:
        ids = tokenizer("\n".join(lines), return_tensors="pt").input_ids[0]
        n = (len(ids) - 1) // sizes.seq_len * sizes.seq_len
        windows = ids[:n].view(-1, sizes.seq_len)  # [num_windows, seq_len]
        gen = torch.Generator().manual_seed(seed)
        for name, param in model.named_parameters():
            param.requires_grad_(only is None or only in name)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
        model.train()
        for _ in range(steps):
            batch = windows[torch.randint(len(windows), (batch_size,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        for param in model.parameters():
            param.requires_grad_(True)
    finally:
        torch.set_num_threads(caller_threads)


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _load(path: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype="float32")


def _write_data(path: Path, seed: int) -> None:
    path.mkdir(parents=True)
    facts = load_facts()
    rng = random.Random(seed)
    for name, rows in (("instruct.jsonl", instruct_rows(facts, rng)),
                       ("medmcqa.jsonl", medmcqa_rows(facts, rng)),
                       ("knowledge.jsonl", knowledge_rows(facts, rng))):
        with open(path / name, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":  # one job of _in_children
    import pickle
    import sys

    function, args = pickle.loads(Path(sys.argv[1]).read_bytes())
    _CHILD_JOBS[function](*args)
