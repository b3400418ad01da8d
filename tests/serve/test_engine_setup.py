"""The one engine set-up (mofe_serve.engine), without starting an engine.

KV-cache sizing, refused parallel layouts, the RPC names and the shutdown order. vLLM's
config objects are real (built from the tiny checkpoint, no engine process); the engine
client in the shutdown-order test is a stand-in that records calls, because what is tested
is only the order (the real engine's shutdown is checked by the server tests).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from click.testing import CliRunner

from mofe_serve.engine import (
    ENGINE_EXIT_GRACE_S,
    KV_CACHE_FLOOR_BYTES,
    KV_CACHE_MAX_SHARE_OF_AVAILABLE,
    EngineSetupError,
    RoutingRpc,
    build_llm,
    check_parallelism,
    counting_cli_args,
    counting_engine_kwargs,
    kv_bytes_per_token,
    plan_cpu_kv_cache,
    plan_kv_cache,
    shut_down_in_order,
    weights_bytes,
)

GiB, MiB = 1 << 30, 1 << 20


def test_kv_plan_is_per_token_bytes_times_len_times_seqs_within_floor_and_cap():
    plan = plan_kv_cache(bytes_per_token=22528, max_model_len=2048, max_num_seqs=128,
                         block_size=128, available_bytes=20 * GiB)
    assert plan.wanted_bytes == 22528 * 2048 * 128 == plan.reserve_bytes  # 5.5 GiB
    small = plan_kv_cache(1024, 512, 128, 128, available_bytes=20 * GiB)
    assert small.wanted_bytes == 64 * MiB and small.reserve_bytes == KV_CACHE_FLOOR_BYTES
    capped = plan_kv_cache(22528, 32768, 256, 128, available_bytes=16 * GiB)
    assert capped.reserve_bytes == int(16 * GiB * KV_CACHE_MAX_SHARE_OF_AVAILABLE)
    split = plan_kv_cache(22528, 32768, 256, 128, available_bytes=16 * GiB, workers=2)
    assert split.reserve_bytes == capped.reserve_bytes // 2
    big_model = plan_kv_cache(22528, 32768, 256, 128, available_bytes=16 * GiB,
                              weights_bytes=10 * GiB)
    assert big_model.reserve_bytes == int(6 * GiB * KV_CACHE_MAX_SHARE_OF_AVAILABLE)
    text = capped.describe()
    assert f"reserving {capped.reserve_bytes} bytes" in text and "22528 B/token" in text


def test_kv_plan_refuses_when_one_sequence_does_not_fit():
    with pytest.raises(EngineSetupError, match="--max-model-len 100000"):
        plan_kv_cache(22528, 100_000, 1, 128, available_bytes=2 * GiB)
    # Rounded up to whole blocks: 129 tokens need two blocks of 128.
    plan = plan_kv_cache(1 * MiB, 129, 1, 128, available_bytes=513 * MiB)
    assert plan.reserve_bytes == 256 * MiB
    with pytest.raises(EngineSetupError):
        plan_kv_cache(1 * MiB, 129, 1, 128, available_bytes=500 * MiB)


def _config(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    return EngineArgs(model=str(model), **counting_engine_kwargs(), **kwargs
                      ).create_engine_config(UsageContext.OPENAI_API_SERVER)


@pytest.fixture(scope="module")
def served_path(tiny_mofe, tmp_path_factory):
    import os

    from mofe_serve.resolve import resolve_served_model

    os.environ.setdefault("MOFE_CACHE_DIR", str(tmp_path_factory.mktemp("engine-cache")))
    return resolve_served_model(str(tiny_mofe), []).path


def test_kv_plan_from_a_real_config_and_user_sizes_win(served_path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    config = _config(served_path, dtype="float32", max_model_len=256, max_num_seqs=8)
    # tiny Mixtral: 4 layers x K,V x 2 KV heads x head_dim 32 x 4 bytes (fp32)
    assert kv_bytes_per_token(config) == 4 * 2 * 2 * 32 * 4
    plan = plan_cpu_kv_cache(config)
    assert plan.max_model_len == 256 and plan.max_num_seqs == 8
    assert plan.reserve_bytes == KV_CACHE_FLOOR_BYTES
    weights = sum(f.stat().st_size for f in served_path.glob("*.safetensors"))
    assert plan.weights_bytes == weights  # stored in fp32, run in fp32
    assert weights_bytes(_config(served_path).model_config) == weights // 2  # run in bf16
    given = _config(served_path, kv_cache_memory_bytes=300 * MiB)
    assert plan_cpu_kv_cache(given) is None
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert plan_cpu_kv_cache(_config(served_path, max_model_len=128)) is None


def test_parallel_layouts_we_cannot_count_are_refused():
    check_parallelism(1, 1)
    check_parallelism(None, None)
    with pytest.raises(EngineSetupError, match="--pipeline-parallel-size 2"):
        check_parallelism(2, 1)
    with pytest.raises(EngineSetupError, match="--data-parallel-size 4"):
        check_parallelism(1, 4)
    with pytest.raises(EngineSetupError, match="--pipeline-parallel-size"):
        build_llm("unused-model", pipeline_parallel_size=2)  # before any engine exists


@pytest.mark.parametrize("flags, named", [
    (["--pipeline-parallel-size", "2"], "--pipeline-parallel-size 2"),
    (["-pp", "2"], "--pipeline-parallel-size 2"),
    (["--data-parallel-size", "2"], "--data-parallel-size 2"),
    (["-dp", "2", "--tensor-parallel-size", "1"], "--data-parallel-size 2"),
])
def test_serve_refuses_pp_and_dp_at_start_up(served_path, flags, named):
    from mofe_serve.cli import serve_cli

    result = CliRunner().invoke(serve_cli, [str(served_path), *flags])
    assert result.exit_code == 1, result.output
    assert named in result.output and "Traceback" not in result.output


def test_serve_passes_the_counting_selection_to_vllm(served_path):
    from mofe_serve.launcher import parse_vllm_args

    args = parse_vllm_args(["--model", str(served_path), *counting_cli_args()])
    kwargs = counting_engine_kwargs()
    assert args.hf_overrides == kwargs["hf_overrides"]
    assert args.worker_extension_cls == kwargs["worker_extension_cls"]


def test_every_rpc_name_is_a_worker_extension_method():
    from mofe_serve import worker_ext

    cls = getattr(worker_ext, counting_engine_kwargs()["worker_extension_cls"].rsplit(".")[-1])
    assert all(callable(getattr(cls, name, None)) for name in RoutingRpc.ALL)


def test_shutdown_stops_our_tasks_first_then_gives_processes_time():
    calls = []

    class Client:
        def shutdown(self, timeout=None):
            calls.append(("engine", timeout))

    async def stop_poller():
        calls.append(("poller", None))

    async def main():
        client = Client()
        shut_down_in_order(client, asyncio.get_running_loop(), [stop_poller])
        # vLLM's HTTP server calls shutdown(timeout=--shutdown-timeout) from a thread.
        done = threading.Event()
        threading.Thread(target=lambda: (client.shutdown(timeout=0), done.set())).start()
        while not done.is_set():
            await asyncio.sleep(0.01)
        client.shutdown(timeout=5)  # vLLM's context exit, on the loop: no waiting on it

    asyncio.run(main())
    assert calls == [("poller", None), ("engine", ENGINE_EXIT_GRACE_S),
                     ("engine", 5 + ENGINE_EXIT_GRACE_S)]


def test_micro_batching_is_refused_naming_the_flag():
    from vllm.config import ParallelConfig

    from mofe_serve.engine import EngineSetupError, check_ubatching

    check_ubatching(ParallelConfig())
    with pytest.raises(EngineSetupError, match="--enable-dbo"):
        check_ubatching(ParallelConfig(enable_dbo=True))
