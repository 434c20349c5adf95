"""Loading feedback with the real engine: a cold streaming chat completion through the gateway shows
vLLM's own loading stages, read from its log, then vLLM's exact answer (heavy: a real start)."""

from __future__ import annotations

import subprocess

import openai
import pytest

from tests.e2e.stack import REAL_IMAGE, REAL_SCHEDULER, real_model

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 300
# Stages the waker reads from vLLM's log (waker/core/engine_log.py); a start on two cores shows several.
REAL_STAGES = (
    "loading the model /models/tiny-llama",
    "loading weights: safetensors checkpoint shards",
    "weights loaded in",
    "KV cache allocated:",
    "engine initialised in",
    "starting the API server",
    "initialising the engine (vLLM 0.32.0)",
    "reading the model's config (LlamaForCausalLM)",
)


def answer(client: openai.OpenAI) -> tuple[str, str]:
    """The (reasoning, content) of a greedy 24-token streaming chat completion."""
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "say something"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    reasoning, content = "", ""
    for chunk in stream:
        if chunk.choices:
            reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
            content += chunk.choices[0].delta.content or ""
    return reasoning, content


def test_a_cold_stream_shows_vllms_loading_stages_then_its_exact_answer(make_stack):
    if subprocess.run(["docker", "image", "inspect", REAL_IMAGE], capture_output=True, check=False).returncode != 0:
        pytest.fail(f"image {REAL_IMAGE} is missing: run scripts/build-test-images", pytrace=False)
    stack = make_stack([real_model("tiny")], scheduler=REAL_SCHEDULER)
    gateway = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=READY_TIMEOUT, max_retries=0)
    reasoning, content = answer(gateway)
    seen = [stage for stage in REAL_STAGES if f"loading tiny: {stage}" in reasoning]
    assert seen, reasoning
    assert reasoning.rstrip("\n").endswith("; its answer follows"), reasoning
    # vLLM's own answer to the same request, asked of its port directly: the same text.
    direct = openai.OpenAI(base_url=f"{stack.model_url('tiny')}/v1", api_key="unused", max_retries=0)
    assert answer(direct) == ("", content) and len(content) > 0
    print(f"stages seen in the stream: {seen}\n{reasoning}")
