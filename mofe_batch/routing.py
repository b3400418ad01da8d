"""Thin adapter over the serving plugin's routing counters (mofe_serve.engine / worker_ext).

The plugin's `MoFEMixtralForCausalLM` keeps cumulative per-(layer, expert) token counts on
the worker; `RoutingWorkerExtension` reads them over `collective_rpc`. Counts are only ever
cumulative, so the batch runner takes a snapshot before and after each chunk of questions
and attributes the difference to that chunk.
"""

from __future__ import annotations

import json
from pathlib import Path

from mofe_serve.engine import RoutingRpc


def is_mixtral(model_dir: Path) -> bool:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("model_type") == "mixtral"


class EngineRouting:
    """Cumulative [layer][expert] token counts of an in-process vllm.LLM."""

    def __init__(self, llm):
        self.llm = llm
        self.llm.collective_rpc(RoutingRpc.ENABLE, args=(True,))

    def snapshot(self) -> list[list[int]]:
        # One dict per worker; with tensor parallelism each rank sees every token, so rank 0
        # (pipeline and data parallelism are refused by mofe_serve.engine).
        return self.llm.collective_rpc(RoutingRpc.SNAPSHOT)[0]["tokens"]


def delta(after: list[list[int]], before: list[list[int]]) -> list[list[int]]:
    return [[a - b for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(after, before,
                                                                          strict=True)]


def by_domain(counts: list[list[int]], domains: list[str]) -> dict[str, int]:
    """Routed token slots per domain, summed over layers and over experts of a domain."""
    out: dict[str, int] = {d: 0 for d in domains}
    for layer in counts:
        for expert, n in enumerate(layer):
            out[domains[expert]] += int(n)
    return out


def load_domains(model_dir: Path, num_experts: int) -> list[str]:
    """Expert domain labels from mofe.json; `expert<i>` when the checkpoint has none."""
    from model_registry.manifest import Manifest

    try:
        domains = Manifest.load(Path(model_dir)).domains()
    except FileNotFoundError:
        return [f"expert{i}" for i in range(num_experts)]
    if len(domains) != num_experts:
        raise ValueError(f"{model_dir}/mofe.json lists {len(domains)} experts but the model "
                         f"has {num_experts}")
    return domains
