"""Sleep mode end to end with the fake vLLM (real nginx, waker and Docker): a swap that puts a model to
sleep and wakes it without a new container, and wakes that hang or crash falling back to a cold start
while the client still gets its answer."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.stack import fake_model
from tests.e2e.test_scheduling import SCHED, complete, wait_in_flight, wait_state
from tests.eventually import eventually_async

pytestmark = pytest.mark.e2e


def sleeper(model_id: str, *, extra: list[str] | None = None, **keys) -> dict:
    """A fake model that sleeps at level 1 and then holds 0.1 of the GPU (the waker sets dev mode)."""
    return fake_model(
        model_id,
        extra=["--sleep-memory", "0.1", *(extra or [])],
        sleep=1,
        sleep_memory=0.1,
        **{"gpu_memory": 0.5, **keys},
    )


async def admin(session, stack, model: str) -> dict:
    async with session.get(f"{stack.waker_url}/admin/models/{model}") as response:
        return await response.json()


def fresh_connections() -> aiohttp.ClientSession:
    """A client that opens a connection per request: each gate change is a graceful nginx reload,
    which closes idle keep-alive connections (as every reload does; clients retry such a request)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


def starts(stack, model: str) -> int:
    return sum(1 for e in stack.docker_events("start") if e["Actor"]["Attributes"].get("io.waker.model") == model)


async def test_a_swap_puts_a_to_sleep_and_wakes_it_without_a_new_container(make_stack):
    stack = make_stack(
        [sleeper("a", gpu_memory=0.6, idle_timeout="1h"), fake_model("b", gpu_memory=0.6)], scheduler=SCHED
    )
    async with fresh_connections() as session:
        status, _, body = await complete(session, stack, "a")
        assert status == 200 and body["choices"]
        status, _, _ = await complete(session, stack, "b")  # a sleeps to make room: 0.1 + 0.6 fit
        assert status == 200
        assert (await admin(session, stack, "a"))["state"] == "sleeping"
        listed = {m["id"]: m for m in (await (await session.get(f"{stack.url}/v1/models")).json())["data"]}
        assert listed["a"]["status"] == {"value": "sleeping"}
        status, _, body = await complete(session, stack, "a")  # b is stopped (it cannot sleep), a wakes
        assert status == 200 and body["choices"]
        described = await admin(session, stack, "a")
        assert described["state"] == "ready" and described["wake_failures"] == 0
        assert (await admin(session, stack, "b"))["state"] == "stopped"
        await wait_in_flight(session, stack, "a", 0)
    assert stack.cli("sleep", "a").stdout.strip() == "a: falling asleep (now sleeping)"
    woken = stack.cli("wake", "a")
    assert woken.returncode == 0 and woken.stdout.strip() == "a: ready", woken.stderr
    assert starts(stack, "a") == 1  # woken twice, never started again
    assert "model_asleep" in stack.log() and "model_awake" in stack.log()
    metrics = await _metrics(stack)
    assert 'waker_model_wakes_total{model="a"} 2' in metrics and 'waker_model_sleeps_total{model="a"} 2' in metrics


async def _metrics(stack) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{stack.waker_url}/metrics") as response:
        return await response.text()


@pytest.mark.parametrize("failure", ["hang", "crash"])
async def test_a_wake_that_hangs_or_crashes_falls_back_to_a_cold_start(make_stack, failure):
    stack = make_stack(
        [sleeper("a", extra=["--wake-fail", failure], wake_timeout="3s", idle_timeout="1h")], scheduler=SCHED
    )
    async with fresh_connections() as session:
        assert (await complete(session, stack, "a"))[0] == 200
        await wait_in_flight(session, stack, "a", 0)  # the request's end mark has reached the waker
        slept = stack.cli("sleep", "a")
        assert slept.returncode == 0 and slept.stdout.strip() == "a: falling asleep (now sleeping)", slept.stderr
        status, _, body = await complete(session, stack, "a", timeout=aiohttp.ClientTimeout(total=60))
        assert status == 200 and body["choices"]
        described = await admin(session, stack, "a")
        assert described["state"] == "ready" and described["wake_failures"] == 1
    assert starts(stack, "a") == 2  # the cold start after the failed wake
    assert "wake_failed" in stack.log()


async def test_the_gateway_puts_an_idle_model_to_sleep_and_a_request_wakes_it(make_stack):
    stack = make_stack([sleeper("a", idle_timeout="2s")], scheduler=SCHED)
    async with fresh_connections() as session:
        assert (await complete(session, stack, "a"))[0] == 200
        await wait_state(session, stack, "a", "sleeping", timeout=30)

        assert "asleep-never-listening.sock" in (stack.runtime_dir / "nginx.conf").read_text()  # gate closed
        status, _, body = await complete(session, stack, "a", timeout=aiohttp.ClientTimeout(total=60))
        assert status == 200 and body["choices"]
        assert (await admin(session, stack, "a"))["state"] == "ready"

    async def gate_open() -> bool:  # routed after the wake, while the woken request is answered
        return "asleep-never-listening.sock" not in (stack.runtime_dir / "nginx.conf").read_text()

    await eventually_async(gate_open, 10, "a's gate opening again", stack.log)
    assert starts(stack, "a") == 1
