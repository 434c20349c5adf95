"""The engine-log parser on the real engine's lines: a start of the real vLLM 0.32 CPU image captured
whole (tests/unit/engine_logs/vllm_cpu_start.log, `docker logs` of `waker-real-vllm:test` serving the tiny
model with --enforce-eager), and the GPU-only lines as vLLM 0.32's source formats them."""

from __future__ import annotations

from pathlib import Path

import pytest

from waker.core.engine_log import EngineStage, Step, parse_line

CPU_START = Path(__file__).with_name("engine_logs") / "vllm_cpu_start.log"


def test_a_real_cpu_start_goes_through_the_stages_in_order():
    stages = [stage for line in CPU_START.read_text().splitlines() if (stage := parse_line(line))]
    assert [s.text for s in stages] == [
        "the engine's process runs (importing its libraries, then reading the model's config)",
        "reading the model's config (LlamaForCausalLM)",
        "initialising the engine (vLLM 0.32.0)",
        "loading the model /models/tiny-llama",
        "loading weights: safetensors checkpoint shards 0% (0/1)",
        "loading weights: safetensors checkpoint shards 100% (1/1)",
        "weights loaded in 0.01 s",
        "KV cache allocated: 2,097,152 tokens (2048x concurrency at 1,024 tokens a request)",
        "engine initialised in 0.32 s",
        "starting the API server",
        "API server up",
    ]
    assert [s.step for s in stages] == sorted(s.step for s in stages)  # never backwards
    assert [s.percent for s in stages if s.step is Step.WEIGHTS] == [0, 100]


def test_noise_says_nothing():
    for line in (
        (
            "(Worker pid=38) WARNING 11-30 09:32:13 [utils.py:333] Attempted to load weight norm.weight with "
            "dtype torch.float32 into parameter with dtype torch.bfloat16"
        ),
        "INFO:     Waiting for application startup.",
        "",
        "get_mempolicy: Operation not permitted",
    ):
        assert parse_line(line) is None


@pytest.mark.parametrize(
    ("line", "step", "text", "percent"),
    [
        # gpu_model_runner.py: the weights on a GPU, with their memory
        (
            (
                "(Worker pid=81) INFO 11-30 10:02:11 [gpu_model_runner.py:5150] Model loading took "
                "14.25 GiB memory and "
                "31.204551 seconds"
            ),
            Step.WEIGHTS_LOADED,
            "model loaded: 14.2 GiB in 31.2 s",
            None,
        ),
        # weight_utils.py: the eager strategy's bar, and the pt loader's
        (
            "Loading safetensors checkpoint shards (eager):  45% Completed | 5/11 [00:12<00:14,  2.41s/it]",
            Step.WEIGHTS,
            "loading weights: safetensors checkpoint shards 45% (5/11)",
            45,
        ),
        (
            "Loading pt checkpoint shards:  50% Completed | 1/2 [00:03<00:03,  3.10s/it]",
            Step.WEIGHTS,
            "loading weights: pt checkpoint shards 50% (1/2)",
            50,
        ),
        (
            "Multi-thread loading shards:  20% Completed | 2/10 [00:01<00:04,  2.00it/s]",
            Step.WEIGHTS,
            "loading weights: shards (multi-thread) 20% (2/10)",
            20,
        ),
        # compilation/monitor.py and backends.py
        (
            "(EngineCore pid=60) INFO 11-30 10:02:12 [monitor.py:40] Starting torch.compile",
            Step.COMPILE,
            "compiling the model (torch.compile)",
            None,
        ),
        (
            "(Worker pid=81) INFO 11-30 10:02:20 [backends.py:1167] Dynamo bytecode transform time: 7.91 s",
            Step.COMPILE,
            "compiling the model (torch.compile): graph traced in 7.91 s",
            None,
        ),
        (
            (
                "(Worker pid=81) INFO 11-30 10:02:49 [backends.py:399] Compiling a graph for compile "
                "range (1, 8192) takes "
                "27.33 s"
            ),
            Step.COMPILE,
            "compiling the model (torch.compile): a graph compiled in 27.3 s",
            None,
        ),
        (
            (
                "(Worker pid=81) INFO 11-30 10:02:22 [backends.py:296] Directly load the compiled "
                "graph(s) for compile range "
                "(1, 8192) from the cache, took 1.842 s"
            ),
            Step.COMPILE,
            "compiled graphs loaded from the cache in 1.84 s",
            None,
        ),
        (
            "(Worker pid=81) INFO 11-30 10:02:50 [monitor.py:62] torch.compile takes 35.24 s in total",
            Step.COMPILE,
            "compiled (torch.compile took 35.2 s)",
            None,
        ),
        # gpu_worker.py and kv_cache_utils.py: the KV cache on a GPU
        (
            "(Worker pid=81) INFO 11-30 10:02:55 [gpu_worker.py:760] Available KV cache memory: 52.31 GiB",
            Step.KV_CACHE,
            "allocating the KV cache: 52.3 GiB",
            None,
        ),
        (
            (
                "(EngineCore pid=60) INFO 11-30 10:02:55 [kv_cache_utils.py:2327] GPU KV cache size: 571,328 tokens, "
                "Maximum concurrency for 32,768 tokens per request: 17.44x"
            ),
            Step.KV_CACHE,
            "KV cache allocated: 571,328 tokens (17.44x concurrency at 32,768 tokens a request)",
            None,
        ),
        # gpu_model_runner.py: CUDA graphs; tqdm rewrites its bar with carriage returns in one log line
        (
            (
                "\rCapturing CUDA graphs (mixed prefill-decode, PIECEWISE):   0%|          | 0/51 [00:00<?, ?it/s]"
                "\rCapturing CUDA graphs (mixed prefill-decode, PIECEWISE):  45%|████▌     | 23/51 "
                "[00:03<00:04,  6.52it/s]"
            ),
            Step.CUDA_GRAPHS,
            "capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 45% (23/51)",
            45,
        ),
        (
            "Capturing CUDA graphs (decode, FULL): 100%|██████████| 35/35 [00:02<00:00, 14.9it/s]\r\n",
            Step.CUDA_GRAPHS,
            "capturing CUDA graphs (decode, FULL): 100% (35/35)",
            100,
        ),
        (
            (
                "(Worker pid=81) INFO 11-30 10:03:02 [gpu_model_runner.py:6582] Graph capturing "
                "finished in 7 secs, took "
                "0.62 GiB"
            ),
            Step.CUDA_GRAPHS,
            "CUDA graphs captured in 7 s (0.62 GiB)",
            None,
        ),
        (
            (
                "(EngineCore pid=60) INFO 11-30 10:03:02 [core.py:396] init engine (profile, create "
                "kv cache, warmup model) "
                "took 52.14 s (compilation: 35.24 s)"
            ),
            Step.ENGINE_READY,
            "engine initialised in 52.1 s",
            None,
        ),
    ],
)
def test_gpu_lines_as_vllm_writes_them(line, step, text, percent):
    assert parse_line(line) == EngineStage(step, text, percent)
