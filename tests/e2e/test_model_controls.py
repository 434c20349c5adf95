"""Open WebUI's (and llama.cpp router's) model controls against the real stack: the `status` of each
model list entry, `GET /models`, and `POST /models/load` / `POST /models/unload` on the client port."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from tests.e2e.stack import fake_model
from tests.eventually import eventually_async

pytestmark = pytest.mark.e2e

SCHED = {"start_timeout": "60s", "stop_timeout": "2s", "min_uptime": "0s"}


async def get_json(session, url, **kwargs):
    async with session.get(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def statuses(session, stack, path="/v1/models") -> dict[str, tuple[str, str]]:
    _, listing = await get_json(session, stack.url + path)
    return {m["id"]: (m["state"], m["status"]["value"]) for m in listing["data"]}


async def test_status_goes_unloaded_loading_loaded_through_a_cold_start_and_listing_wakes_nothing(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=2.0)], scheduler=SCHED)
    async with aiohttp.ClientSession() as session:
        began = time.monotonic()
        assert await statuses(session, stack) == {"alpha": ("stopped", "unloaded")}
        assert time.monotonic() - began < 1.0  # from memory: Open WebUI's model list has a short timeout
        _, listed = await get_json(session, f"{stack.url}/v1/models")
        _, bare = await get_json(session, f"{stack.url}/models")
        assert bare == listed  # llama.cpp's router path for the same list
        _, waker_stats = await get_json(session, f"{stack.waker_url}/_stats")
        assert waker_stats["wakes"] == 0 and stack.containers() == []

        body = b'{"model": "alpha", "prompt": "x", "max_tokens": 1}'
        cold = asyncio.create_task(session.post(f"{stack.url}/v1/completions", data=body))
        await eventually_async(lambda: _status_is(session, stack, ("starting", "loading")), 20, "alpha loading")
        async with await cold as response:
            assert response.status == 200
        assert await statuses(session, stack, "/models") == {"alpha": ("ready", "loaded")}


async def _status_is(session, stack, expected) -> bool:
    return (await statuses(session, stack))["alpha"] == expected


def test_the_openai_sdk_still_parses_the_model_list(make_stack):
    stack = make_stack([fake_model("alpha", aliases=["a"]), fake_model("beta")], scheduler=SCHED)
    models = list(openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused").models.list())
    assert [m.id for m in models] == ["alpha", "beta"]
    assert models[0].owned_by == "waker" and models[0].to_dict()["status"] == {"value": "unloaded"}
