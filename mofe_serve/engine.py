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
- CPU threads for offline jobs (`plan_cpu_threads`): vLLM's CPU executor pins its worker's
  OpenMP threads to the cores of one NUMA node minus one core per worker it reserves for the
  API server and engine core (`VLLM_CPU_OMP_THREADS_BIND=auto`), so on a 2-core machine the
  worker computes on one thread, on core 0, in every vLLM process at once. An offline job
  has no API server: `build_llm(..., cpu_plan=...)` runs the engine in this process (no
  engine-core or worker process to spawn, nothing reserved) on the cores the plan chose,
  avoiding cores that other vLLM engines on the machine already compute on.
- Shutdown: vLLM uses its request-drain timeout (`--shutdown-timeout`, 0 = abort) also as
  the deadline for its engine processes to exit, so by default it SIGKILLs them at once and
  leaks their shared memory. We give them `ENGINE_EXIT_GRACE_S` to exit on their own.

vLLM's plugin loader imports `plugin.py`, and with it this module, in every vLLM process:
nothing heavy is imported at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
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


# --- CPU threads for offline engines ---------------------------------------------------------

@dataclass(frozen=True)
class CpuPlan:
    """Where an offline engine computes: `threads` torch threads on `cpus`."""

    cpus: tuple[int, ...]
    allowed: tuple[int, ...]  # the cores this process may use
    others: dict[int, tuple[int, ...]] = field(default_factory=dict)  # pid -> its cores
    shared: tuple[int, ...] = ()  # cores of `cpus` another engine computes on too

    @property
    def threads(self) -> int:
        return len(self.cpus)

    def describe(self) -> str:
        text = (f"offline engine in this process: {self.threads} thread(s) on core(s) "
                f"{_cores(self.cpus)} of {_cores(self.allowed)}")
        if self.others:
            seen = "; ".join(f"pid {pid} on {_cores(cpus)}" for pid, cpus in
                             sorted(self.others.items()))
            text += f"; other vLLM engines on this machine: {seen}"
        if self.shared:
            text += (f". WARNING: sharing core(s) {_cores(self.shared)} with them: both "
                     "will run slower (pass --threads to use fewer cores, or stop them)")
        return text


def _cores(cpus) -> str:
    return ",".join(str(c) for c in cpus) or "none"


def plan_cpu_threads(allowed: list[int], others: dict[int, tuple[int, ...]],
                     threads: int | None = None) -> CpuPlan:
    """Choose the cores of an offline engine: `threads` of them (default: every allowed core
    no other vLLM engine computes on, or all allowed cores when none is free), free cores
    first, then the cores the fewest other engines use. No core is reserved for an API
    server: an offline engine has none, and its scheduler runs between forward passes."""
    allowed = sorted(set(allowed))
    if not allowed:
        raise EngineSetupError("this process may run on no CPU core (empty CPU affinity)")
    if threads is not None and not 1 <= threads <= len(allowed):
        raise EngineSetupError(
            f"--threads {threads}: must be between 1 and the {len(allowed)} core(s) this "
            f"process may use ({_cores(allowed)})")
    load = {c: 0 for c in allowed}
    for cpus in others.values():
        for c in cpus:
            if c in load:
                load[c] += 1
    free = [c for c in allowed if not load[c]]
    n = threads or len(free) or len(allowed)
    chosen = sorted(sorted(allowed, key=lambda c: (load[c], c))[:n])
    return CpuPlan(tuple(chosen), tuple(allowed), dict(others),
                   tuple(c for c in chosen if load[c]))


def _is_offline_mofe_engine(cmdline: list[str]) -> bool:
    """`mofe batch` (the console script or `-m mofe_cli`): an in-process offline engine."""
    words = [os.path.basename(w) for w in cmdline[:4]]
    return "batch" in cmdline[:6] and ("mofe" in words or "mofe_cli" in cmdline[:4])


def _thread_cpus(proc) -> set[int]:
    """Union of the CPU affinities of a process's threads."""
    cpus: set[int] = set()
    for thread in proc.threads():
        with contextlib.suppress(OSError):
            cpus |= os.sched_getaffinity(thread.id)
    return cpus


def other_engine_cpus() -> dict[int, tuple[int, ...]]:
    """Cores that other vLLM engines on this machine compute on, by pid: vLLM CPU workers
    (process title `VLLM::Worker...`, cores from the `OMP_PLACES` vLLM gave them, else their
    threads' affinity) and other `mofe batch` processes (their threads' affinity). This
    process is not counted; engines it started (e.g. a server) are."""
    import psutil

    found: dict[int, tuple[int, ...]] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid == os.getpid() or not cmdline:
            continue
        try:
            if cmdline[0].startswith("VLLM::Worker"):
                places = proc.environ().get("OMP_PLACES", "")
                cpus = ({int(c) for c in places.strip("{}").split(",") if c.strip().isdigit()}
                        or _thread_cpus(proc))
            elif _is_offline_mofe_engine(cmdline):
                cpus = _thread_cpus(proc)
            else:
                continue
        except (psutil.Error, OSError):
            continue
        if cpus:
            found[proc.pid] = tuple(sorted(cpus))
    return found


def plan_offline_cpus(threads: int | None = None) -> CpuPlan | None:
    """The CPU plan of an offline engine on this machine, or None when not on CPU;
    `build_llm` logs it (once vLLM's logging is configured)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    return plan_cpu_threads(sorted(os.sched_getaffinity(0)), other_engine_cpus(), threads)


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pin_threads(cpus: tuple[int, ...]) -> Callable[[], None]:
    """Pin every thread of this process (and so the threads they start) to `cpus`; returns
    a function restoring each thread's previous affinity."""
    before: dict[int, set[int]] = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        with contextlib.suppress(OSError):  # a thread that just exited
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)

    def restore() -> None:
        for tid, mask in before.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, mask)
    return restore


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


def build_llm(model: str, count_routing: bool = True, family: list | None = None,
              cpu_plan: CpuPlan | None = None, **kwargs):
    """A `vllm.LLM` for `model` (the counting model unless `count_routing` is False), with
    the same checks and KV-cache sizing as `mofe serve`. `family`: checkpoint directories of
    several variants (the first is `model`), served by one family engine; each request then
    names its variant in `SamplingParams.extra_args[VARIANT_ARG]`.

    With a `cpu_plan` (offline jobs on CPU, `plan_offline_cpus`) the engine runs in this
    process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, single-process executor) with the plan's
    threads pinned to its cores; `close_llm` restores this process's threads' affinity.
    Without one, vLLM's default: an engine-core and a worker process, the worker pinned by
    `VLLM_CPU_OMP_THREADS_BIND`.
    """
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    check_parallelism(kwargs.get("pipeline_parallel_size"), kwargs.get("data_parallel_size"))
    if count_routing:
        kwargs.update(counting_engine_kwargs(family))
    if cpu_plan is None:
        config = EngineArgs(model=model, **kwargs).create_engine_config(UsageContext.LLM_CLASS)
        plan = check_engine_config(config)
        if plan is not None:
            kwargs["kv_cache_memory_bytes"] = plan.reserve_bytes
        return LLM(model=model, **kwargs)
    if (kwargs.get("tensor_parallel_size") or 1) > 1:
        raise EngineSetupError("an in-process offline engine runs one worker: "
                               "--tensor-parallel-size must be 1")
    import torch

    if count_routing:
        _register_model_class_here(family)
    kwargs["distributed_executor_backend"] = "uni"
    # OMP_NUM_THREADS: vLLM otherwise drops this process's torch threads to 1 ("for
    # serving"); the engine reads VLLM_ENABLE_V1_MULTIPROCESSING only while it is built.
    with _env({"VLLM_ENABLE_V1_MULTIPROCESSING": "0",
               "OMP_NUM_THREADS": str(cpu_plan.threads)}):
        config = EngineArgs(model=model, **kwargs).create_engine_config(UsageContext.LLM_CLASS)
        plan = check_engine_config(config)
        if plan is not None:
            kwargs["kv_cache_memory_bytes"] = plan.reserve_bytes
        use_vllm_log_handlers()
        (logger.warning if cpu_plan.shared else logger.info)("%s", cpu_plan.describe())
        restore = _pin_threads(cpu_plan.cpus)
        set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op
        try:
            llm = LLM(model=model, **kwargs)
        except BaseException:
            restore()
            raise
        finally:
            torch.set_num_threads = set_num_threads
    torch.set_num_threads(cpu_plan.threads)
    llm.mofe_cpu_plan = cpu_plan
    llm.mofe_restore_affinity = restore
    return llm


def _register_model_class_here(family: list | None = None) -> None:
    """For an in-process engine: register the counting model's class itself, not its import
    string. vLLM inspects a class registered by string in a fresh subprocess (importing
    vLLM there: about 10 s here) whenever its model-info cache misses (first run, any change
    to the model's module); a class is inspected in this process, which imports it anyway."""
    from vllm import ModelRegistry

    if family is not None and len(family) > 1:
        from .family_model import MoFEFamilyMixtralForCausalLM

        ModelRegistry.register_model(FAMILY_ARCHITECTURE, MoFEFamilyMixtralForCausalLM)
        return
    from .model import MoFEMixtralForCausalLM

    ModelRegistry.register_model(ARCHITECTURE, MoFEMixtralForCausalLM)


def close_llm(llm) -> None:
    """Stop a `vllm.LLM`'s engine processes now (not at interpreter exit), letting them exit
    on their own so their shared memory is released."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    try:
        if core is not None:
            core.shutdown(timeout=ENGINE_EXIT_GRACE_S)
    finally:
        restore = getattr(llm, "mofe_restore_affinity", None)
        if restore is not None:
            restore()


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
