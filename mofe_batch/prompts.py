"""Prompt building: lm-eval's default templates, custom Jinja templates, k-shot, chat.

A prompt is `description + shots + doc_to_text(question)`; each shot is
`doc_to_text(shot) + " " + choices[gold] + "\\n\\n"` (lm-eval's target and few-shot
delimiters). The scored continuations are `" " + choice`.
Shots: for MMLU, the first K dev rows of the question's subject, as lm-eval's MMLU tasks
(`fewshot_config: sampler: first_n` over the per-subject dev split), so every question of a
subject shares one few-shot prefix (vLLM computes it once). For the other tasks, drawn per
question from the dev rows with `Random(f"{seed}:{id}")`, so a question gets the same shots
whatever the order, chunking or resume point.
"""

from __future__ import annotations

import random
from pathlib import Path

import jinja2

from .tasks import Question

FIRST_N = "first_n"
FIRST_N_TASKS = ("mmlu",)  # tasks whose shots are lm-eval's first_n per subject
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"

# Byte-for-byte lm-eval 0.4.13 doc_to_text for each task (see tasks.py for the sources).
DEFAULT_TEMPLATES = {
    "medmcqa": ("Question: {{ question }}\nChoices:\n"
                "{% for o in options %}{{ letters[loop.index0] }}. {{ o }}\n{% endfor %}"
                "Answer:"),
    "mmlu": ("{{ question.strip() }}\n"
             "{% for o in options %}{{ letters[loop.index0] }}. {{ o }}\n{% endfor %}"
             "Answer:"),
    "pubmedqa": "Abstract: {{ context }}\nQuestion: {{ question }}\nAnswer:",
    "mcq": ("Question: {{ question }}\nChoices:\n"
            "{% for o in options %}{{ letters[loop.index0] }}. {{ o }}\n{% endfor %}"
            "Answer:"),
}


def mmlu_description(subject: str) -> str:
    # lm-eval's per-subject mmlu yaml: dataset_name with underscores as spaces.
    return ("The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n")


def template_source(template: str) -> str:
    """--template: the file's text if a file of that name exists, else the text itself."""
    try:
        is_file = "\n" not in template and Path(template).is_file()
    except OSError:  # e.g. a template text longer than a file name may be
        is_file = False
    return Path(template).read_text() if is_file else template


def load_template(template: str | None, task: str) -> jinja2.Template:
    """--template: a file path if one exists, else the template text itself."""
    source = DEFAULT_TEMPLATES[task] if template is None else template_source(template)
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"--template: Jinja syntax error on line {exc.lineno}: "
                         f"{exc.message}") from None


class PromptBuilder:
    def __init__(self, task: str, template: str | None = None, shots: int = 0,
                 dev: list[Question] | None = None, seed: int = 1234,
                 chat_tokenizer=None):
        if shots and not dev:
            raise ValueError("--shots needs --dev FILE with labeled rows to draw shots from")
        self.task, self.shots, self.seed = task, shots, seed
        self.dev = [q for q in (dev or []) if q.gold is not None]
        if shots > len(self.dev):
            raise ValueError(f"--shots {shots} but the dev file has {len(self.dev)} labeled rows")
        self.template = load_template(template, task)
        self.chat_tokenizer = chat_tokenizer  # set when --chat-template was asked for

    def doc_to_text(self, q: Question) -> str:
        try:
            return self.template.render(
                question=q.question, options=q.options, letters=q.choices, choices=q.choices,
                context=q.context, subject=q.subject, id=q.id, row=q.extra)
        except jinja2.UndefinedError as exc:
            raise ValueError(f"--template: {exc.message} (row id {q.id})") from None

    def description(self, q: Question) -> str:
        return mmlu_description(q.subject) if self.task == "mmlu" else ""

    def draw_shots(self, q: Question) -> list[Question]:
        if not self.shots:
            return []
        if self.task in FIRST_N_TASKS:
            # lm-eval draws these from the dev split, never the test split: no id exclusion
            # (rows without ids are numbered per file, so ids may coincide across files)
            same = [d for d in self.dev if d.subject == q.subject]
            if len(same) < self.shots:
                raise ValueError(f"--shots {self.shots}: the dev file has {len(same)} labeled "
                                 f"rows of subject {q.subject!r} (MMLU shots are the first "
                                 "dev rows of the question's subject, as lm-eval's)")
            return same[:self.shots]
        pool = [d for d in self.dev if d.id != q.id]
        return random.Random(f"{self.seed}:{q.id}").sample(pool, self.shots)

    def context(self, q: Question) -> str:
        shots = "".join(self.doc_to_text(s) + TARGET_DELIMITER + s.choices[s.gold]
                        + FEWSHOT_DELIMITER for s in self.draw_shots(q))
        if self.chat_tokenizer is None:
            return self.description(q) + shots + self.doc_to_text(q)
        # lm-eval's apply_chat_template without multiturn: description as the system turn,
        # shots and question collapsed into one user turn, then the generation prompt.
        messages = []
        if self.description(q):
            messages.append({"role": "system", "content": self.description(q).rstrip("\n")})
        messages.append({"role": "user", "content": shots + self.doc_to_text(q)})
        return self.chat_tokenizer.apply_chat_template(messages, tokenize=False,
                                                       add_generation_prompt=True)

    def continuations(self, q: Question) -> list[str]:
        return [TARGET_DELIMITER + c for c in q.choices]
