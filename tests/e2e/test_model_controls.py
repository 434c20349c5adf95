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


# ---- POST /models/load and /models/unload ---------------------------------------------------------

ON = {"client_model_control": True}
KEY = "sk-controls-key-0001"


async def post(session, stack, path, body=None, data=None, headers=None, base=None):
    kwargs = {"json": body} if data is None else {"data": data}
    async with session.post((base or stack.url) + path, headers=headers or {}, **kwargs) as response:
        return response.status, response.headers, await response.json(content_type=None)


@pytest.fixture
def stack(make_stack):
    return make_stack(
        [
            fake_model("alpha", aliases=["a"], load_delay=1.0),
            fake_model("beta", load_delay=0.2, extra=["--tokens-per-second", "10"]),
        ],
        scheduler=SCHED,
        gateway=ON,
    )


async def test_load_answers_once_ready_and_unload_stops(stack):
    async with aiohttp.ClientSession() as session:
        began = time.monotonic()
        status, _, body = await post(session, stack, "/models/load", {"model": "a"})  # an alias works
        assert status == 200 and time.monotonic() - began >= 1.0  # it waited for the load
        assert body["success"] is True and body["id"] == "alpha" and body["status"] == {"value": "loaded"}
        assert (await statuses(session, stack))["alpha"] == ("ready", "loaded")
        status, _, body = await post(session, stack, "/models/load", {"model": "alpha"})
        assert status == 200 and body["state"] == "ready"  # already loaded: nothing to wait for
        assert len(stack.docker_events("start")) == 1

        status, _, body = await post(session, stack, "/models/unload", {"model": "alpha"})
        assert status == 200 and body["outcome"] == "stopping" and body["status"] == {"value": "unloaded"}
        assert (await statuses(session, stack))["alpha"] == ("stopped", "unloaded")
        status, _, body = await post(session, stack, "/models/unload", {"model": "alpha"})
        assert status == 200 and body["outcome"] == "not running"
        async with session.get(f"{stack.waker_url}/metrics") as response:
            assert 'waker_model_stops_total{model="alpha",reason="client"} 1' in await response.text()


async def test_unload_refuses_a_loading_a_pinned_and_a_busy_model(stack):
    async with aiohttp.ClientSession() as session:
        loading = asyncio.create_task(post(session, stack, "/models/load", {"model": "alpha"}))
        await eventually_async(lambda: _status_is(session, stack, ("starting", "loading")), 20, "alpha loading")
        status, _, body = await post(session, stack, "/models/unload", {"model": "alpha"})
        assert status == 409 and body["error"]["code"] == "model_loading"
        assert (await loading)[0] == 200
        await post(session, stack, "/models/load", {"model": "beta"})
        await post(session, stack, "/admin/models/alpha/pin", base=stack.waker_url)
        status, _, body = await post(session, stack, "/models/unload", {"model": "alpha"})
        assert status == 409 and body["error"]["code"] == "model_pinned"
        assert "waker unpin alpha" in body["error"]["message"]

        payload = {"model": "beta", "prompt": "x", "stream": True, "max_tokens": 40}
        async with session.post(f"{stack.url}/v1/completions", json=payload) as streaming:
            await streaming.content.readline()
            status, _, body = await post(session, stack, "/models/unload", {"model": "beta"})
            assert status == 409 and body["error"]["code"] == "model_busy"
            assert "1 request(s) in flight" in body["error"]["message"]
        assert await statuses(session, stack) == {"alpha": ("ready", "loaded"), "beta": ("ready", "loaded")}


async def test_bad_input_gets_clear_json_errors_and_changes_nothing(stack):
    async with aiohttp.ClientSession() as session:
        for path in ("/models/load", "/models/unload"):
            status, _, body = await post(session, stack, path, {"model": "nope"})
            assert status == 404 and body["error"]["code"] == "model_not_found"
            assert "'nope'" in body["error"]["message"] and "alpha, beta" in body["error"]["message"]
            for data in (b"{not json", b"", b"\xff\xfe"):
                status, _, body = await post(session, stack, path, data=data)
                assert status == 400 and body["error"]["code"] == "invalid_json", data
            for doc in ({}, {"model": 7}, ["alpha"], "alpha", {"name": "alpha"}):
                status, _, body = await post(session, stack, path, doc)
                assert status == 400 and body["error"]["code"] == "invalid_body", doc
            async with session.get(stack.url + path) as response:
                assert response.status == 405 and (await response.json())["error"]["code"] == "bad_request"
    assert stack.containers() == []


async def test_without_the_setting_both_are_refused_naming_it(make_stack):
    stack = make_stack([fake_model("alpha")], scheduler=SCHED)
    async with aiohttp.ClientSession() as session:
        for path in ("/models/load", "/models/unload"):
            status, _, body = await post(session, stack, path, {"model": "alpha"})
            assert status == 403 and body["error"]["code"] == "client_model_control_disabled"
            assert "[gateway] client_model_control = true" in body["error"]["message"]
        assert (await statuses(session, stack, "/models"))["alpha"] == ("stopped", "unloaded")
    assert stack.containers() == []


async def test_with_api_keys_the_controls_and_the_lists_need_a_key(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=0.2)], scheduler=SCHED, gateway={**ON, "api_keys": [KEY]})
    load = ("POST", "/models/load", {"model": "alpha"})
    unload = ("POST", "/models/unload", {"model": "alpha"})
    calls = [("GET", "/v1/models", None), ("GET", "/models", None), load, unload]
    async with aiohttp.ClientSession() as session:
        for method, path, body in calls:
            for headers in ({}, {"Authorization": "Bearer wrong-key-123"}):
                async with session.request(method, stack.url + path, json=body, headers=headers) as response:
                    assert response.status == 401, path
                    assert (await response.json())["error"]["code"] == "invalid_api_key"
        # The waker's own port serves the controls too, so it checks the key again.
        status, headers, body = await post(session, stack, "/models/load", {"model": "alpha"}, base=stack.waker_url)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert stack.containers() == []
        for method, path, body in calls:
            for headers in ({"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
                async with session.request(method, stack.url + path, json=body, headers=headers) as response:
                    assert response.status == 200, path


async def test_a_load_that_cannot_start_answers_at_once_with_the_state_and_the_error(make_stack):
    stack = make_stack(
        [fake_model("broken", extra=["--fail", "exit_during_load"])],
        gateway=ON,
        scheduler={**SCHED, "max_start_failures": 1, "start_backoff": "5m"},
    )
    async with aiohttp.ClientSession() as session:
        status, _, body = await post(session, stack, "/models/load", {"model": "broken"})
        assert status == 503 and body["error"]["state"] == "failed"
        assert body["error"]["status"] == {"value": "failed"} and "exit" in body["error"]["message"]
        began = time.monotonic()
        status, headers, body = await post(session, stack, "/models/load", {"model": "broken"})
        assert status == 503 and body["error"]["code"] == "model_failed" and int(headers["Retry-After"]) > 200
        assert time.monotonic() - began < 1.0  # in back-off: no new start, no wait
        status, _, body = await post(session, stack, "/models/unload", {"model": "broken"})
        assert status == 200 and body["outcome"] == "not running" and body["state"] == "failed"  # back-off kept
    assert len(stack.docker_events("start")) == 1


async def test_a_load_while_an_exclusive_model_holds_the_gpu_does_what_a_request_would(make_stack):
    stack = make_stack(
        [fake_model("big", exclusive=True, load_delay=0.2), fake_model("small", load_delay=0.2)],
        gateway=ON,
        scheduler={**SCHED, "on_busy": "reject"},
    )
    async with aiohttp.ClientSession() as session:
        await post(session, stack, "/models/load", {"model": "big"})
        await post(session, stack, "/admin/models/big/pin", base=stack.waker_url)  # not evictable
        status, headers, body = await post(session, stack, "/models/load", {"model": "small"})
        assert status == 429 and body["error"]["code"] == "model_busy" and headers["X-Busy-Model"] == "big"
        assert body["error"]["state"] == "stopped" and body["error"]["status"] == {"value": "unloaded"}
