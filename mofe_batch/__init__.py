"""Batch medical QA scoring (`mofe batch`): lm-eval-style log-likelihood multiple choice.

Its own package beside `mofe_serve`: batch scoring shares only the engine set-up
(`mofe_serve.engine`: counting model, RPC names, KV sizing) and REF resolution with the
server, and nothing in `mofe_serve` imports it.

Modules: readers (streamed input files), tasks (MedMCQA / MMLU / PubMedQA / generic MCQ row
schemas and lm-eval prompts), prompts (templates, shots, chat template), scoring (lm-eval
tokenization and option ranking), backends (vLLM offline, OpenAI endpoint, transformers),
routing (expert counters from the serving plugin), output (resumable JSONL), report, runner.
"""
