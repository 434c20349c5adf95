"""The request loop end to end: real nginx, the real waker, a real Docker engine, the fake vLLM image."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import aiohttp
import pytest

from tests.e2e.stack import docker, fake_model
from tests.eventually import eventually_async

pytestmark = pytest.mark.e2e


def big_non_ascii_body(model: str | None) -> bytes:
    """About 4 MB of JSON with multi-byte characters, the kind of prompt a long document produces."""
    text = "Grüße, 日本語, emoji 🚀, ñandú — " * 110_000
    doc = {"messages": [{"role": "user", "content": text}], "max_tokens": 4}
    if model is not None:
        doc["model"] = model
    body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    assert len(body) > 4_000_000
    return body


async def post(session, url, body: bytes, **kwargs):
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}, **kwargs) as r:
        return r.status, dict(r.headers), await r.read()


async def stats(session, stack) -> dict:
    async with session.get(f"{stack.waker_url}/_stats") as r:
        return await r.json()


@pytest.mark.parametrize("routing", ["path", "body"])
async def test_cold_request_starts_model_once_and_delivers_body_intact(make_stack, routing):
    stack = make_stack([fake_model("alpha", aliases=["a"], load_delay=1.0)])
    body = big_non_ascii_body("a" if routing == "body" else None)
    url = f"{stack.url}/v1/a/chat/completions" if routing == "path" else f"{stack.url}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        status, headers, reply = await post(session, url, body)
    assert status == 200, reply
    assert headers["x-fake-method"] == "POST"
    assert headers["x-fake-path"] == "/v1/chat/completions"
    assert int(headers["x-fake-body-bytes"]) == len(body)
    assert headers["x-fake-body-sha256"] == hashlib.sha256(body).hexdigest()
    assert json.loads(reply)["model"] == "alpha"
    assert len(stack.docker_events("create")) == 1
    assert len(stack.docker_events("start")) == 1


async def test_fifty_concurrent_cold_requests_share_one_start(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=1.5)])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        requests = []
        for i in range(50):
            if i % 2:
                requests.append(post(session, f"{stack.url}/v1/alpha/completions", b'{"prompt": "hi"}'))
            else:
                requests.append(post(session, f"{stack.url}/v1/completions", b'{"model": "alpha", "prompt": "hi"}'))
        results = await asyncio.gather(*requests)
    assert [status for status, _, _ in results] == [200] * 50
    assert len({headers["x-fake-instance"] for _, headers, _ in results}) == 1
    assert len(stack.docker_events("start")) == 1
    assert len(stack.containers()) == 1


async def test_stream_arrives_chunk_by_chunk(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=0.2, extra=["--tokens-per-second", "10"])])
    body = json.dumps(
        {"model": "alpha", "stream": True, "max_tokens": 20, "messages": [{"role": "user", "content": "count"}]}
    ).encode()
    async with aiohttp.ClientSession() as session:
        await post(session, f"{stack.url}/v1/alpha/models", b"")  # warm the model up first
        arrivals, chunks = [], []
        async with session.post(f"{stack.url}/v1/chat/completions", data=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for line in response.content:
                if line.startswith(b"data: {"):
                    arrivals.append(time.time())
                    chunks.append(json.loads(line[6:]))
    assert len(chunks) == 21  # vLLM's role chunk, then one per token
    # 20 tokens at 10/s take ~2 s to produce; the first must reach us long before the last is made.
    assert chunks[-1]["sent_at"] - arrivals[0] > 1.5
    assert arrivals[-1] - arrivals[0] > 1.5


async def test_ready_model_traffic_bypasses_the_waker(make_stack):
    stack = make_stack([fake_model("alpha", aliases=["a"], load_delay=0.2)])
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, f"{stack.url}/v1/a/completions", b'{"prompt": "warm"}')
        assert status == 200
        before = await stats(session, stack)
        assert before["wakes"] == 1
        assert before["wake_response_body_bytes"] == 0
        for _ in range(20):
            status, _, _ = await post(session, f"{stack.url}/v1/alpha/completions", b'{"prompt": "x"}')
            assert status == 200
            status, _, _ = await post(session, f"{stack.url}/v1/completions", b'{"model": "a", "prompt": "x"}')
            assert status == 200
        after = await stats(session, stack)
    assert after["requests"] == before["requests"]
    assert after["wake_response_body_bytes"] == 0


@pytest.mark.parametrize(
    "path, body, status, code, needle",
    [
        ("/v1/chat/completions", b'{"model": "nope", "messages": []}', 404, "model_not_found", "alpha"),
        ("/v1/nope/chat/completions", b'{"messages": []}', 404, "model_not_found", "alpha"),
        ("/v1/chat/completions", b'{"model": "alpha", "messages": [', 400, "invalid_json", "JSON"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "missing_model", "model"),
        ("/v1/chat/completions", b"", 400, "missing_body", "body"),
        ("/v1/chat/completions", b'["alpha"]', 400, "invalid_body", "object"),
        ("/v1/chat/completions", b'{"model": 7}', 400, "invalid_model", "string"),
        ("/nothing/here", b"{}", 404, "not_found", "/v1/"),
    ],
)
async def test_bad_requests_get_openai_errors_and_start_nothing(make_stack, path, body, status, code, needle):
    stack = make_stack([fake_model("alpha")])
    async with aiohttp.ClientSession() as session:
        got, headers, reply = await post(session, stack.url + path, body)
        waker = await stats(session, stack)
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(reply)["error"]
    assert error["code"] == code
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"
    assert waker["wakes"] == 0
    assert stack.containers() == []


async def test_model_exiting_during_load_fails_fast_with_exit_code_and_logs(make_stack):
    stack = make_stack(
        [fake_model("crashy", load_delay=0.5, extra=["--fail", "exit_during_load", "--exit-code", "7"])],
        scheduler={"start_timeout": "10m", "stop_timeout": "2s"},
    )
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        status, headers, reply = await post(
            session, f"{stack.url}/v1/chat/completions", b'{"model": "crashy", "messages": []}'
        )
    elapsed = time.monotonic() - began
    assert status == 503
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(reply)["error"]
    assert error["code"] == "model_exited"
    assert "code 7" in error["message"]
    assert "CUDA out of memory" in error["message"]  # the container's last log lines
    assert elapsed < 5


async def test_model_list_shows_every_model_with_its_state(make_stack):
    stack = make_stack([fake_model("alpha", aliases=["a"], load_delay=0.2), fake_model("beta")])
    async with aiohttp.ClientSession() as session:
        await post(session, f"{stack.url}/v1/a/completions", b'{"prompt": "warm"}')
        async with session.get(f"{stack.url}/v1/models") as response:
            listing = await response.json()
        async with session.get(f"{stack.url}/healthz") as response:
            assert response.status == 200
    assert listing["object"] == "list"
    states = {m["id"]: m["state"] for m in listing["data"]}
    assert states == {"alpha": "ready", "beta": "stopped"}
    assert listing["data"][0]["aliases"] == ["a"]


async def test_missing_image_is_named_in_the_error(make_stack):
    stack = make_stack([{"id": "ghost", "image": "waker-test/no-such-image:1"}])
    async with aiohttp.ClientSession() as session:
        status, _, reply = await post(session, f"{stack.url}/v1/ghost/chat/completions", b"{}")
    assert status == 503
    assert "waker-test/no-such-image:1" in json.loads(reply)["error"]["message"]
    assert stack.containers() == []


async def test_changed_spec_recreates_the_container_on_next_start(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=0.2)])
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, f"{stack.url}/v1/alpha/completions", b'{"prompt": "x"}')
        assert status == 200
    first = stack.containers()
    stack.models[0]["env"] = {"CHANGED": "1"}
    stack.restart_waker()
    docker("stop", "-t", "1", first[0])  # a stale spec matters at the next start, not while it serves
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, f"{stack.url}/v1/alpha/completions", b'{"prompt": "x"}')
        assert status == 200, stack.log()
    second = stack.containers()
    assert len(second) == 1 and second != first
    env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", second[0]))
    assert "CHANGED=1" in env


async def test_running_models_keep_serving_when_the_waker_dies_and_a_new_one_adopts_them(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=0.2)])
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await post(session, f"{stack.url}/v1/alpha/completions", b'{"prompt": "x"}')
        assert status == 200
        instance = headers["x-fake-instance"]
        stack.proc.kill()  # SIGKILL: no clean-up at all
        stack.proc.wait()
        for _ in range(10):
            status, _, _ = await post(session, f"{stack.url}/v1/completions", b'{"model": "alpha", "prompt": "x"}')
            assert status == 200
        stack.restart_waker()

        async def adopted_ready() -> bool:
            async with session.get(f"{stack.url}/v1/models") as response:
                return (await response.json())["data"][0]["state"] == "ready"

        await eventually_async(adopted_ready, 5, "alpha adopted as ready", stack.log)
        status, headers, _ = await post(session, f"{stack.url}/v1/alpha/completions", b'{"prompt": "x"}')
    assert status == 200 and headers["x-fake-instance"] == instance
    assert len(stack.docker_events("start")) == 1


async def test_a_request_waiting_on_a_start_gets_json_and_retry_after_when_the_waker_dies(make_stack):
    """security-probe.md #16: clients held while a model started got nginx's HTML 502 page when the waker
    died. The request is held by the waker from before the container's start until it is ready (a
    60 s load), so the kill lands while it waits."""
    stack = make_stack([fake_model("slow", load_delay=60)], scheduler={"start_timeout": "120s"})
    async with aiohttp.ClientSession() as session:
        waiting = asyncio.create_task(post(session, f"{stack.url}/v1/slow/completions", b'{"prompt": "x"}'))

        async def started() -> bool:
            return bool(await asyncio.to_thread(stack.docker_events, "start"))

        await eventually_async(started, 60, "the start the request waits on", stack.log)
        assert not waiting.done()
        stack.proc.kill()  # SIGKILL: the connection nginx holds to the waker is cut
        stack.proc.wait()
        status, headers, body = await asyncio.wait_for(waiting, 30)
    assert status == 503 and headers["Content-Type"] == "application/json", body[:200]
    assert headers["Retry-After"] == "5" and json.loads(body)["error"]["code"] == "waker_unavailable"
    stack.restart_waker()  # it adopts the orphaned nginx, which the stack's teardown then stops


async def test_a_disabled_model_is_not_served_and_says_why(make_stack):
    stack = make_stack([fake_model("alpha"), fake_model("old", status="disabled", notes="crashes on GB10")])
    async with aiohttp.ClientSession() as session:
        for url, body in (
            (f"{stack.url}/v1/chat/completions", b'{"model": "old"}'),
            (f"{stack.url}/v1/old/chat/completions", b"{}"),
        ):
            status, _, reply = await post(session, url, body)
            error = json.loads(reply)["error"]
            assert status == 404 and error["code"] == "model_disabled" and "crashes on GB10" in error["message"]
        async with session.get(f"{stack.url}/v1/models") as response:
            assert [m["id"] for m in (await response.json())["data"]] == ["alpha"]
    assert stack.containers() == []
