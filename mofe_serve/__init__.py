"""MoFE serving: vLLM's OpenAI server with per-expert routing metrics (`mofe serve`).

Light on import: vLLM and torch are imported by the submodules that need them
(plugin.register, model, counters, launcher), never here. See docs/serving.md.
"""
