"""Other workloads on the box (`[[external]]`) with real Docker: a container the waker did not make
(the fake image, standing for ComfyUI) blocks starts, is paused for a model and unpaused after it, and
is shown with its memory; it is never stopped or removed."""

from __future__ import annotations

import json
import uuid

import aiohttp
import pytest

from tests.e2e.stack import FAKE_IMAGE, docker, fake_model
from tests.eventually import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def comfyui():
    """A running container of another workload, labelled as its owner would."""
    name = f"comfyui-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--label", f"app={name}", FAKE_IMAGE, "serve", "fake/comfy", "--port", "8000")
    yield name
    docker("rm", "-f", name, check=False)


def state(name: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .State}}", name))


async def complete(session, stack, model) -> tuple[int, dict, dict]:
    payload = json.dumps({"model": model, "prompt": "hi", "max_tokens": 1}).encode()
    async with session.post(f"{stack.url}/v1/completions", data=payload) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def test_a_block_workload_refuses_starts_while_it_runs(make_stack, comfyui):
    external = {"name": "comfyui", "container": comfyui, "policy": "block"}
    stack = make_stack([fake_model("a")], externals=[external])
    async with aiohttp.ClientSession() as session:
        status, headers, body = await complete(session, stack, "a")
        assert (status, body["error"]["code"], headers.get("Retry-After")) == (429, "external_busy", "30"), body
        assert f"'{comfyui}' ([[external]] 'comfyui')" in body["error"]["message"]
        assert stack.docker_events("create") == []
        docker("stop", "-t", "1", comfyui)
        status, _, body = await complete(session, stack, "a")
        assert status == 200, body


async def test_a_pause_workload_is_paused_for_a_model_and_unpaused_after_it(make_stack, comfyui):
    external = {"name": "comfyui", "label": f"app={comfyui}", "policy": "pause"}
    stack = make_stack([fake_model("a")], externals=[external])
    async with aiohttp.ClientSession() as session:
        status, _, body = await complete(session, stack, "a")
        assert status == 200, body
        assert state(comfyui)["Paused"] is True
        async with session.get(f"{stack.waker_url}/admin/models") as response:
            (shown,) = (await response.json())["externals"]
        assert shown["name"] == "comfyui" and shown["policy"] == "pause"
        assert [(c["name"], c["paused"]) for c in shown["containers"]] == [(comfyui, True)]
        async with session.post(f"{stack.waker_url}/admin/models/a/stop") as response:
            assert response.status == 200
    eventually(lambda: state(comfyui)["Paused"] is False, 20, "the workload unpaused", stack.log)
    assert state(comfyui)["Running"] is True  # never stopped, never removed
