"""The one vLLM engine set-up behind `mofe serve`, `mofe batch` and the benchmarks.

- Counting model: the `hf_overrides` architecture that selects `MoFEMixtralForCausalLM`, the
  worker extension that answers the counter RPCs, and those RPCs' names.
- Parallelism: only layouts whose counts are exact are accepted (no pipeline or data
  parallelism; tensor parallelism is fine: every TP rank routes every token).
- KV cache on CPU: with no size given, vLLM's CPU worker reserves 92% of the node's memory
  (`gpu_memory_utilization`), or refuses to start when that much is not free. We size it from
  the model instead (`plan_kv_cache`). `--kv-cache-memory-bytes` and `VLLM_CPU_KVCACHE_SPACE`
  still win: vLLM applies the latter while building its config, so both show up as an
  explicit size there.
- Shutdown: vLLM uses its request-drain timeout (`--shutdown-timeout`, 0 = abort) also as
  the deadline for its engine processes to exit, so by default it SIGKILLs them at once and
  leaks their shared memory. We give them `ENGINE_EXIT_GRACE_S` to exit on their own.

vLLM's plugin loader imports `plugin.py`, and with it this module, in every vLLM process:
nothing heavy is imported at module level.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("mofe_serve.engine")

ARCHITECTURE = "MoFEMixtralForCausalLM"
MODEL_CLASS = "mofe_serve.model:MoFEMixtralForCausalLM"
WORKER_EXTENSION = "mofe_serve.worker_ext.RoutingWorkerExtension"
# Several variants of one family in one engine (mofe_serve.family_model, docs/serving.md).
FAMILY_ARCHITECTURE = "MoFEFamilyMixtralForCausalLM"
FAMILY_MODEL_CLASS = "mofe_serve.family_model:MoFEFamilyMixtralForCausalLM"
FAMILY_WORKER = "mofe_serve.family_worker.FamilyWorker"
FAMILY_CONFIG_KEY = "mofe_family"  # hf_config attribute: the variants' checkpoint paths
VARIANT_ARG = "mofe_variant"  # SamplingParams.extra_args key: a request's variant index


class RoutingRpc:
    """`collective_rpc` method names; `RoutingWorkerExtension` defines one method per name."""

    SNAPSHOT = "mofe_routing_snapshot"
    ENABLE = "mofe_routing_enable"
    RESET = "mofe_routing_reset"
    REQUESTS = "mofe_request_routing"  # pop per-request summaries by routing key
    ALL = (SNAPSHOT, ENABLE, RESET, REQUESTS)


# `SamplingParams.extra_args` key (a request's `vllm_xargs`) whose value, a key chosen by the
# API server, asks the worker for a per-request routing summary (step_routing.py).
REQUEST_ROUTING_XARG = "mofe_routing"


# Seconds vLLM's engine-core and worker processes get to exit after SIGTERM before vLLM
# SIGKILLs them (measured: about 6 s on the 2-core machine, more than vLLM's 5 s default for
# offline engines; unused time is not waited).
ENGINE_EXIT_GRACE_S = 30.0

GiB = 1 << 30
MiB = 1 << 20
KV_CACHE_FLOOR_BYTES = 256 * MiB
KV_CACHE_MAX_SHARE_OF_AVAILABLE = 0.5  # of the memory available when the engine starts


class EngineSetupError(ValueError):
    """An engine configuration `mofe serve` / `mofe batch` refuses; the message names the flag."""


def counting_engine_kwargs(family: list | None = None) -> dict[str, Any]:
    """`vllm.LLM` / `EngineArgs` keyword arguments selecting the counting model and its RPCs.

    `family`: the checkpoint directories of several variants of one family (the first is
    the one vLLM loads); they are served by the family model and worker."""
    if family is not None and len(family) > 1:
        return {"hf_overrides": {"architectures": [FAMILY_ARCHITECTURE],
                                 FAMILY_CONFIG_KEY: [str(p) for p in family]},
                "worker_extension_cls": WORKER_EXTENSION, "worker_cls": FAMILY_WORKER}
    return {"hf_overrides": {"architectures": [ARCHITECTURE]},
            "worker_extension_cls": WORKER_EXTENSION}


def counting_cli_args(family: list | None = None) -> list[str]:
    """The same selection as vLLM command-line arguments."""
    import json

    kwargs = counting_engine_kwargs(family)
    argv = ["--hf-overrides", json.dumps(kwargs["hf_overrides"]),
            "--worker-extension-cls", kwargs["worker_extension_cls"]]
    if "worker_cls" in kwargs:
        argv += ["--worker-cls", kwargs["worker_cls"]]
    return argv


# --- parallelism ---------------------------------------------------------------------------

def check_parallelism(pipeline_parallel_size: int | None,
                      data_parallel_size: int | None) -> None:
    """Refuse the layouts whose routing counts we cannot read exactly.

    Pipeline parallelism: each stage holds only its own layers and the counter RPC is read
    from one rank, so later layers would read 0. Data parallelism: each engine has its own
    workers and the RPC answers for one engine only.
    """
    if (pipeline_parallel_size or 1) > 1:
        raise EngineSetupError(
            f"--pipeline-parallel-size {pipeline_parallel_size} is not supported: each "
            "pipeline stage counts only its own layers and MoFE reads one rank. Use "
            "--tensor-parallel-size to split the model instead.")
    if (data_parallel_size or 1) > 1:
        raise EngineSetupError(
            f"--data-parallel-size {data_parallel_size} is not supported: routing counts "
            "would cover one engine only. Run one `mofe serve` per replica behind a load "
            "balancer instead.")


def check_ubatching(parallel_config) -> None:
    """Refuse micro-batching (DBO): each micro-batch's MoE sees a slice of the step's tokens,
    and the per-step routing buffer (counters.py) records every slice at rows [:slice]."""
    if getattr(parallel_config, "use_ubatching", False):
        raise EngineSetupError(
            "--enable-dbo / --ubatch-size > 1 is not supported: micro-batches would "
            "overwrite each other's rows in the per-step routing buffer. Drop the flag.")


# --- KV cache on CPU ------------------------------------------------------------------------

@dataclass(frozen=True)
class KvCachePlan:
    reserve_bytes: int
    bytes_per_token: int
    max_model_len: int
    max_num_seqs: int
    wanted_bytes: int  # bytes_per_token x max_model_len x max_num_seqs
    cap_bytes: int
    available_bytes: int
    weights_bytes: int

    def describe(self) -> str:
        return (f"reserving {self.reserve_bytes} bytes ({_gib(self.reserve_bytes)}) for the "
                "KV cache on CPU: "
                f"{self.bytes_per_token} B/token x max_model_len {self.max_model_len} x "
                f"max_num_seqs {self.max_num_seqs} = {_gib(self.wanted_bytes)}, floor "
                f"{_gib(KV_CACHE_FLOOR_BYTES)}, cap {_gib(self.cap_bytes)} "
                f"({KV_CACHE_MAX_SHARE_OF_AVAILABLE:.0%} of {_gib(self.available_bytes)} "
                f"available less {_gib(self.weights_bytes)} of weights). Set "
                "--kv-cache-memory-bytes or VLLM_CPU_KVCACHE_SPACE to choose.")


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def plan_kv_cache(bytes_per_token: int, max_model_len: int, max_num_seqs: int,
                  block_size: int, available_bytes: int, workers: int = 1,
                  weights_bytes: int = 0) -> KvCachePlan:
    """KV-cache bytes per worker: enough for `max_num_seqs` sequences of `max_model_len`
    tokens, at least `KV_CACHE_FLOOR_BYTES`, at most a share of the memory available once
    the weights are loaded, split over the workers. Raises when not even one full-length
    sequence fits (vLLM would refuse to start with a less direct message)."""
    wanted = bytes_per_token * max_model_len * max_num_seqs
    one_sequence = bytes_per_token * math.ceil(max_model_len / block_size) * block_size
    free_after_weights = max(available_bytes - weights_bytes, 0)
    cap = int(free_after_weights * KV_CACHE_MAX_SHARE_OF_AVAILABLE) // max(workers, 1)
    reserve = min(max(wanted, KV_CACHE_FLOOR_BYTES, one_sequence), cap)
    if reserve < one_sequence:
        raise EngineSetupError(
            f"one sequence of --max-model-len {max_model_len} needs {_gib(one_sequence)} of "
            f"KV cache, but only {_gib(cap)} may be reserved "
            f"({KV_CACHE_MAX_SHARE_OF_AVAILABLE:.0%} of {_gib(available_bytes)} available "
            f"less {_gib(weights_bytes)} of weights"
            + (f", split over {workers} workers" if workers > 1 else "")
            + "): lower --max-model-len or set --kv-cache-memory-bytes")
    return KvCachePlan(reserve, bytes_per_token, max_model_len, max_num_seqs, wanted, cap,
                       available_bytes, weights_bytes)


def kv_bytes_per_token(vllm_config) -> int:
    """K and V bytes of one token over all attention layers of one worker."""
    from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype

    model, parallel = vllm_config.model_config, vllm_config.parallel_config
    dtype = kv_cache_dtype_str_to_dtype(vllm_config.cache_config.cache_dtype, model)
    layers = model.get_num_layers_by_block_type(parallel, "attention")
    return (layers * 2 * model.get_num_kv_heads(parallel) * model.get_head_size()
            * dtype.itemsize)


def weights_bytes(model_config) -> int:
    """Memory the weights will take: the checkpoint's weight files, scaled from the dtype
    they are stored in to the dtype vLLM runs (0 for a hub id not on disk)."""
    from pathlib import Path

    import torch

    path = Path(model_config.model)
    files = (list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
             if path.is_dir() else [])
    size = sum(f.stat().st_size for f in files)
    # A family engine also holds the other variants' non-expert tensors (not their experts).
    for other in (getattr(model_config.hf_config, FAMILY_CONFIG_KEY, None) or [])[1:]:
        from model_registry.checkpoint import non_expert_tensors

        size += sum(t.end - t.start for t in non_expert_tensors(Path(other)))
    stored = getattr(model_config.hf_config, "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    if isinstance(stored, torch.dtype) and stored.itemsize:
        size = size * model_config.dtype.itemsize // stored.itemsize
    return size


def _available_memory() -> int:
    """What vLLM's CPU worker will measure (its NUMA node, cgroup limit), and never more
    than the machine's MemAvailable."""
    import psutil

    available = psutil.virtual_memory().available
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        node = get_allowed_cpu_list()[0].numa_node
        available = min(available, get_memory_node_info(node).available_memory)
    except Exception as exc:  # no NUMA information: MemAvailable alone
        logger.debug("no NUMA memory info (%s); using MemAvailable", exc)
    return available


def plan_cpu_kv_cache(vllm_config) -> KvCachePlan | None:
    """The KV-cache size to reserve, or None when the user chose one or not on CPU."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or vllm_config.cache_config.kv_cache_memory_bytes:
        return None
    parallel = vllm_config.parallel_config
    return plan_kv_cache(
        kv_bytes_per_token(vllm_config), vllm_config.model_config.max_model_len,
        vllm_config.scheduler_config.max_num_seqs, vllm_config.cache_config.block_size,
        _available_memory(), workers=parallel.world_size,
        weights_bytes=weights_bytes(vllm_config.model_config))


def check_engine_config(vllm_config) -> KvCachePlan | None:
    """Every check and choice on a built `VllmConfig`; returns the KV plan to apply."""
    parallel = vllm_config.parallel_config
    check_parallelism(parallel.pipeline_parallel_size, parallel.data_parallel_size)
    check_ubatching(parallel)
    plan = plan_cpu_kv_cache(vllm_config)
    if plan is not None:
        use_vllm_log_handlers()
        logger.info("%s", plan.describe())
    return plan


# --- building and closing engines -----------------------------------------------------------

def prepare_server_args(args) -> KvCachePlan | None:
    """Checks for `mofe serve`'s parsed vLLM arguments; sets the KV-cache size on `args`."""
    check_parallelism(args.pipeline_parallel_size, args.data_parallel_size)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    config = AsyncEngineArgs.from_cli_args(args).create_engine_config(
        usage_context=UsageContext.OPENAI_API_SERVER)
    plan = check_engine_config(config)
    if plan is not None:
        args.kv_cache_memory_bytes = plan.reserve_bytes
    return plan


def build_llm(model: str, count_routing: bool = True, family: list | None = None, **kwargs):
    """A `vllm.LLM` for `model` (the counting model unless `count_routing` is False), with
    the same checks and KV-cache sizing as `mofe serve`. `family`: checkpoint directories of
    several variants (the first is `model`), served by one family engine; each request then
    names its variant in `SamplingParams.extra_args[VARIANT_ARG]`."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    check_parallelism(kwargs.get("pipeline_parallel_size"), kwargs.get("data_parallel_size"))
    if count_routing:
        kwargs.update(counting_engine_kwargs(family))
    config = EngineArgs(model=model, **kwargs).create_engine_config(UsageContext.LLM_CLASS)
    plan = check_engine_config(config)
    if plan is not None:
        kwargs["kv_cache_memory_bytes"] = plan.reserve_bytes
    return LLM(model=model, **kwargs)


def close_llm(llm) -> None:
    """Stop a `vllm.LLM`'s engine processes now (not at interpreter exit), letting them exit
    on their own so their shared memory is released."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None:
        core.shutdown(timeout=ENGINE_EXIT_GRACE_S)


def shut_down_in_order(engine_client, loop: asyncio.AbstractEventLoop,
                       first: list[Callable[[], Awaitable[None]]]) -> None:
    """Make `engine_client.shutdown` (called by vLLM's HTTP server on SIGTERM, from a thread)
    first run the `first` coroutines on `loop` (e.g. stop the routing poller, so nothing
    calls into a dying engine), then shut the engine down with a grace period for its
    processes on top of the request-drain timeout vLLM passes."""
    shutdown = engine_client.shutdown

    def in_order(timeout: float | None = None) -> None:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        if not on_loop:  # vLLM calls from an executor thread: the loop is free to run these
            for stop in first:
                try:
                    asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
                except Exception as exc:
                    logger.warning("stopping %s before the engine: %s", stop, exc)
        shutdown(timeout=(timeout or 0) + ENGINE_EXIT_GRACE_S)

    engine_client.shutdown = in_order


class _VllmHandlers(logging.Handler):
    """Hands records to the handlers vLLM's logger has when each record is emitted: vLLM
    configures its logging lazily and may configure it again while building an engine."""

    def emit(self, record: logging.LogRecord) -> None:
        vllm_logger = logging.getLogger("vllm")
        if not vllm_logger.isEnabledFor(record.levelno):
            return
        if not vllm_logger.handlers:
            logging.lastResort.handle(record)
        for handler in vllm_logger.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def use_vllm_log_handlers() -> None:
    """Send `mofe_serve` log records through vLLM's handlers (format, level, stream), so our
    lines appear among vLLM's own, in the server log and in `mofe batch`'s output."""
    ours = logging.getLogger("mofe_serve")
    if not any(isinstance(h, _VllmHandlers) for h in ours.handlers):
        ours.addHandler(_VllmHandlers())
        ours.setLevel(logging.DEBUG)  # vLLM's level decides, in the handler
        ours.propagate = False
