"""GPU scheduling end to end: swaps, queueing behind streams, reject mode, the keep_warm lane, idle
stops that respect streams, waker restarts, back-off, and a waker that sleeps at idle."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest

from tests.e2e.stack import docker, fake_model
from tests.eventually import eventually_async

pytestmark = pytest.mark.e2e

SCHED = {"start_timeout": "60s", "stop_timeout": "2s", "min_uptime": "0s"}


async def states(session, stack) -> dict[str, str]:
    async with session.get(f"{stack.url}/v1/models") as response:
        return {m["id"]: m["state"] for m in (await response.json())["data"]}


async def wait_state(session, stack, model, state, timeout=20.0) -> float:
    """The moment `model` was seen in `state`."""

    async def reached() -> float | None:
        return time.monotonic() if (await states(session, stack))[model] == state else None

    return await eventually_async(reached, timeout, f"{model} becoming {state}", stack.log)


async def in_flight(session, stack, model) -> int:
    async with session.get(f"{stack.waker_url}/admin/models/{model}") as response:
        return (await response.json())["in_flight"]


async def wait_in_flight(session, stack, model, count: int) -> None:
    """Until the waker counts `count` requests of `model` in flight (nginx's begin and end marks)."""

    async def counted() -> bool:
        return await in_flight(session, stack, model) == count

    await eventually_async(counted, 10, f"{count} request(s) of {model} in flight", stack.log)


async def complete(session, stack, model, timeout=None, **body) -> tuple[int, dict, dict]:
    payload = json.dumps({"model": model, "prompt": "hi", **body}).encode()
    async with session.post(f"{stack.url}/v1/completions", data=payload, timeout=timeout) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def stream(session, stack, model, tokens: int) -> list[float]:
    """Streams `tokens` chunks; returns the arrival time of each, and checks the stream completed."""
    payload = json.dumps({"model": model, "prompt": "count", "stream": True, "max_tokens": tokens}).encode()
    arrivals, done = [], False
    async with session.post(f"{stack.url}/v1/completions", data=payload) as response:
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic())
            done = done or line.startswith(b"data: [DONE]")
    assert done and len(arrivals) == tokens
    return arrivals


async def streaming_in_flight(session, stack, model, tokens: int) -> asyncio.Task[list[float]]:
    """A stream of `model` (see `stream`), returned once the waker counts it in flight: evidence, not a sleep.
    Earlier requests are seen ended first, so that the count is the stream's."""
    await wait_in_flight(session, stack, model, 0)
    task = asyncio.create_task(stream(session, stack, model, tokens))
    await wait_in_flight(session, stack, model, 1)
    return task


def running(stack, model) -> bool:
    out = docker(
        "ps", "-q", "--filter", f"label=io.waker.stack={stack.name}", "--filter", f"label=io.waker.model={model}"
    )
    return bool(out.strip())


async def test_swap_evicts_the_idle_model_and_waits_for_its_exit(make_stack):
    stack = make_stack(
        [fake_model("a", load_delay=0.3, gpu_memory=0.6), fake_model("b", load_delay=0.3, gpu_memory=0.6)],
        scheduler=SCHED,
    )
    async with aiohttp.ClientSession() as session:
        assert (await complete(session, stack, "a"))[0] == 200
        status, headers, body = await complete(session, stack, "b")
        assert status == 200 and body["model"] == "b"
        assert await states(session, stack) == {"a": "stopped", "b": "ready"}
    assert not running(stack, "a") and running(stack, "b")
    dies = [e for e in stack.docker_events("die") if e["Actor"]["Attributes"]["io.waker.model"] == "a"]
    b_start = [e for e in stack.docker_events("start") if e["Actor"]["Attributes"]["io.waker.model"] == "b"]
    assert dies[0]["timeNano"] <= b_start[0]["timeNano"]  # A had exited before B started


async def test_a_request_for_b_waits_while_a_streams_then_runs(make_stack):
    stack = make_stack(
        [
            fake_model("a", load_delay=0.2, gpu_memory=0.6, extra=["--tokens-per-second", "10"]),
            fake_model("b", load_delay=0.2, gpu_memory=0.6),
        ],
        scheduler=SCHED,
    )
    async with aiohttp.ClientSession() as session:
        await complete(session, stack, "a", max_tokens=1)
        streaming = await streaming_in_flight(session, stack, "a", 25)
        status, _, _ = await complete(session, stack, "b")
        b_done = time.monotonic()
        arrivals = await streaming
    assert status == 200
    assert b_done > arrivals[-1]  # B was served only after A's stream had ended, and it ended whole


async def test_reject_mode_answers_429_with_retry_after_naming_the_busy_model(make_stack):
    stack = make_stack(
        [
            fake_model("a", load_delay=0.2, gpu_memory=0.6, extra=["--tokens-per-second", "10"]),
            fake_model("b", load_delay=0.2, gpu_memory=0.6),
        ],
        scheduler={**SCHED, "on_busy": "reject"},
    )
    async with aiohttp.ClientSession() as session:
        await complete(session, stack, "a", max_tokens=1)
        streaming = await streaming_in_flight(session, stack, "a", 30)
        status, headers, body = await complete(session, stack, "b")
        await streaming
    assert status == 429
    assert headers["X-Busy-Model"] == "a"
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 10  # a young stream, expected to last about as long as the first request
    error = body["error"]
    assert error["code"] == "model_busy" and "'a'" in error["message"]
    assert error["holders"][0]["model"] == "a" and error["holders"][0]["in_flight"] == 1
    assert error["holders"][0]["expected_release_seconds"] == retry_after
    assert not running(stack, "b")


async def test_keep_warm_yields_to_an_exclusive_model_and_comes_back(make_stack):
    stack = make_stack(
        [
            fake_model("util", load_delay=0.2, gpu_memory=0.04, keep_warm=True),
            fake_model("big", load_delay=0.2, gpu_memory=0.8, exclusive=True, idle_timeout="2s"),
        ],
        scheduler=SCHED,
    )
    async with aiohttp.ClientSession() as session:
        await wait_state(session, stack, "util", "ready")  # started with the waker, unasked
        status, _, _ = await complete(session, stack, "big")
        assert status == 200
        assert (await states(session, stack))["util"] == "stopped"
        assert not running(stack, "util")
        await wait_state(session, stack, "big", "stopped", timeout=10)
        await wait_state(session, stack, "util", "ready", timeout=10)


async def test_a_stream_longer_than_idle_timeout_finishes_and_only_then_the_model_stops(make_stack):
    stack = make_stack(
        [fake_model("a", load_delay=0.2, idle_timeout="1s", extra=["--tokens-per-second", "10"])], scheduler=SCHED
    )
    async with aiohttp.ClientSession() as session:
        arrivals = await stream(session, stack, "a", 30)  # 3 s of stream, three idle timeouts long
        assert arrivals[-1] - arrivals[0] > 2.5
        assert (await states(session, stack))["a"] == "ready"
        stopped_at = await wait_state(session, stack, "a", "stopped", timeout=10)
    assert 0.8 < stopped_at - arrivals[-1] < 4


async def test_waker_kill_and_restart_under_traffic_loses_no_request_and_stops_nothing(make_stack):
    stack = make_stack([fake_model("a", load_delay=0.2)], scheduler=SCHED)
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        await complete(session, stack, "a", max_tokens=1)
        stop = asyncio.Event()

        async def traffic():
            while not stop.is_set():
                statuses.append((await complete(session, stack, "a", max_tokens=1))[0])

        async def served(count: int, when: str) -> None:
            async def enough() -> bool:
                return len(statuses) >= count

            await eventually_async(enough, 20, f"{count} requests served {when}", stack.log)

        clients = [asyncio.create_task(traffic()) for _ in range(4)]
        await served(20, "before the kill")
        stack.proc.kill()
        stack.proc.wait()
        await served(len(statuses) + 20, "with no waker")
        await asyncio.to_thread(stack.restart_waker)
        await served(len(statuses) + 20, "after the restart")
        stop.set()
        await asyncio.gather(*clients)
        assert (await states(session, stack))["a"] == "ready"
    assert set(statuses) == {200}
    assert len(stack.docker_events("start")) == 1 and len(stack.docker_events("die")) == 0
    assert "nginx_adopted" in stack.log()


async def test_a_model_that_keeps_crashing_backs_off_and_fails_fast(make_stack):
    stack = make_stack(
        [fake_model("crashy", load_delay=0.2, extra=["--fail", "exit_during_load"])],
        scheduler={**SCHED, "max_start_failures": 2, "start_backoff": "60s"},
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            status, _, body = await complete(session, stack, "crashy")
            assert status == 503 and body["error"]["code"] == "model_exited"
        began = time.monotonic()
        status, headers, body = await complete(session, stack, "crashy")
        assert time.monotonic() - began < 0.5
    assert status == 503 and body["error"]["code"] == "model_failed"
    assert "2 times in a row" in body["error"]["message"] and "CUDA out of memory" in body["error"]["message"]
    assert 55 <= int(headers["Retry-After"]) <= 60
    assert len(stack.docker_events("start")) == 2


async def test_a_client_that_gives_up_while_queued_starts_nothing(make_stack):
    stack = make_stack(
        [
            fake_model("a", load_delay=0.2, gpu_memory=0.6, idle_timeout="1h", extra=["--tokens-per-second", "10"]),
            fake_model("b", load_delay=0.2, gpu_memory=0.6),
        ],
        scheduler=SCHED,
    )
    async with aiohttp.ClientSession() as session:
        await complete(session, stack, "a", max_tokens=1)
        streaming = await streaming_in_flight(session, stack, "a", 20)
        with pytest.raises(asyncio.TimeoutError):
            await complete(session, stack, "b", timeout=aiohttp.ClientTimeout(total=0.5))

        async def abandoned() -> bool:
            return "request_abandoned" in stack.log()

        await eventually_async(abandoned, 10, "the abandoned request noticed", stack.log)
        await streaming
        await wait_in_flight(session, stack, "a", 0)  # the scheduler has seen the GPU freed
        assert await states(session, stack) == {"a": "ready", "b": "stopped"}
    assert not any(e["Actor"]["Attributes"]["io.waker.model"] == "b" for e in stack.docker_events("create"))


async def test_a_container_that_dies_while_ready_is_noticed_and_restarted_on_demand(make_stack):
    stack = make_stack([fake_model("a", load_delay=0.2)], scheduler=SCHED)
    async with aiohttp.ClientSession() as session:
        _, first, _ = await complete(session, stack, "a")
        docker("kill", stack.containers()[0])
        await wait_state(session, stack, "a", "failed", timeout=5)  # from the events stream: a crash
        async with session.get(f"{stack.waker_url}/admin/models/a") as response:
            model = await response.json()
        assert model["failures"] == 1 and "exited with code 137 while serving" in model["last_error"], model
        status, second, _ = await complete(session, stack, "a")  # one crash is below max_start_failures
    assert status == 200 and second["x-fake-instance"] != first["x-fake-instance"]
    assert "model_exited" in stack.log()


async def test_the_waker_makes_no_docker_calls_at_idle(make_stack, docker_call_counter):
    stack = make_stack(
        [fake_model("a", load_delay=0.2), fake_model("b", load_delay=0.2)],
        scheduler=SCHED,
        docker_host=docker_call_counter.url,
    )
    async with aiohttp.ClientSession() as session:
        await complete(session, stack, "a")
        await complete(session, stack, "b")
        await asyncio.sleep(0.5)
        before = docker_call_counter.calls()
        await asyncio.sleep(5)
        after = docker_call_counter.calls()
    assert after == before, [c for c in docker_call_counter.log[len(before) :]]
    assert any(re.search(r"GET /[^ ]*events", c) for c in before)  # it follows the events stream
