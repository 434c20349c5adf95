"""Sleep mode with the real engine (vLLM's CPU build, dev mode set by the waker): the gateway puts an
idle model to sleep, and a request through the official SDK wakes it and is answered, without a new
container start and without a hung request."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import openai
import pytest

from tests.e2e.stack import REAL_IMAGE, REAL_SCHEDULER, real_model
from tests.e2e.test_real_engine import READY_TIMEOUT, sdk_chat
from tests.eventually import eventually

pytestmark = pytest.mark.e2e


def state(stack, model: str) -> str:
    with urllib.request.urlopen(f"{stack.waker_url}/admin/models/{model}", timeout=10) as response:
        return json.loads(response.read())["state"]


def test_an_idle_real_model_sleeps_and_a_request_wakes_it(make_stack):
    if subprocess.run(["docker", "image", "inspect", REAL_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"image {REAL_IMAGE} is missing: run scripts/build-test-images", pytrace=False)
    stack = make_stack([real_model("tiny", sleep=1, idle_timeout="3s", wake_timeout="60s")], scheduler=REAL_SCHEDULER)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=READY_TIMEOUT, max_retries=0)
    first = sdk_chat(client, "tiny", 4)
    assert first.usage.completion_tokens == 4
    eventually(lambda: state(stack, "tiny") == "sleeping", 60, "the idle model asleep", stack.log)
    # Not answered within the wake's deadline plus margin means a hung request: the test fails.
    woken = sdk_chat(openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=90, max_retries=0), "tiny", 4)
    assert woken.usage.completion_tokens == 4  # the tiny model's tokens may decode to nothing visible
    assert state(stack, "tiny") == "ready"
    starts = [e for e in stack.docker_events("start") if e["Actor"]["Attributes"].get("io.waker.model") == "tiny"]
    assert len(starts) == 1, "woken, not started again"
    assert "model_awake" in stack.log()
