"""Fidelity checks of sleep mode beyond its basics (fidelity_checks.check_sleep): vLLM's level-2 wake
protocol step by step, and the waker's own sleep adapter (waker/engine/sleep.py) run against each
engine. Like every check, each returns rows that test_fidelity.py compares between the fake and vLLM."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.e2e.engine_probe import (
    HELD,
    MODEL,
    Engine,
    compact,
    completion,
    metrics,
    post,
    read_stream,
)
from waker.config.sleep import SleepLevel
from waker.engine import sleep as engine_sleep

UNANSWERED_FOR = 1.5  # "hangs" is an absence: the time a request is given to be answered


async def unanswered(task: asyncio.Task) -> str:
    await asyncio.wait([task], timeout=UNANSWERED_FOR)
    return f"unanswered after {UNANSWERED_FOR:g} s" if not task.done() else f"answered {task.result()}"


async def finished(task: asyncio.Task) -> str:
    status, answer = await asyncio.wait_for(task, 30)
    return f"{status} finish={answer['choices'][0]['finish_reason']}" if status == 200 else f"{status} {answer}"


async def check_level_2_wake_protocol(engine: Engine) -> dict[str, str]:
    """vLLM's order for a level-2 wake: weights, reload_weights, KV cache, prefix-cache reset. The
    engine serves only once every part is awake."""
    rows = {}
    async with aiohttp.ClientSession() as session:

        async def call(method: str, path: str, body=b"") -> str:
            if method == "GET":
                async with session.get(f"{engine.url}{path}") as response:
                    return f"{response.status} {await response.text()}"
            status, answer = await post(session, f"{engine.url}{path}", body)
            return f"{status} {compact(answer) if isinstance(answer, dict) else answer}"

        rows["POST /sleep?level=2"] = await call("POST", "/sleep?level=2")
        rows["POST /wake_up?tags=weights"] = await call("POST", "/wake_up?tags=weights")
        rows["GET /is_sleeping (weights awake)"] = await call("GET", "/is_sleeping")
        pending = asyncio.create_task(post(session, f"{engine.url}/v1/completions", completion(5)))
        rows["a request with only the weights awake"] = await unanswered(pending)
        rows["POST /collective_rpc reload_weights"] = await call(
            "POST", "/collective_rpc", {"method": "reload_weights"}
        )
        rows["POST /collective_rpc without a method"] = await call("POST", "/collective_rpc", {})
        rows["POST /wake_up?tags=kv_cache"] = await call("POST", "/wake_up?tags=kv_cache")
        rows["that request after the KV cache woke"] = await finished(pending)
        rows["GET /is_sleeping (all awake)"] = await call("GET", "/is_sleeping")
        rows["POST /reset_prefix_cache"] = await call("POST", "/reset_prefix_cache")
        awake = await metrics(session, engine.url)
        rows["engine_sleep_state after"] = ",".join(
            f"{state}={awake[f'vllm:engine_sleep_state[{state}]']:g}"
            for state in ("awake", "weights_offloaded", "discard_all")
        )
        async with session.post(f"{engine.url}/v1/completions", json=completion(HELD, stream=True)) as response:
            await read_stream(response, until=lambda events: len(events) >= 3)
            rows["POST /reset_prefix_cache with a request running"] = await call("POST", "/reset_prefix_cache")
            response.close()
        rows["POST /sleep?level=1"] = await call("POST", "/sleep?level=1")
        rows["level 1: POST /wake_up?tags=weights"] = await call("POST", "/wake_up?tags=weights")
        rows["level 1: POST /wake_up?tags=kv_cache"] = await call("POST", "/wake_up?tags=kv_cache")
    assert rows["a request with only the weights awake"].startswith("unanswered")
    assert rows["that request after the KV cache woke"] == "200 finish=length"
    assert rows["POST /reset_prefix_cache with a request running"] == '200 {"success":false}'
    return rows


async def check_waker_sleep_adapter(engine: Engine) -> dict[str, str]:
    """waker.engine.sleep at both levels: asleep, a request sent meanwhile hangs, the wake (with its
    check: awake, and a one-token completion answered) succeeds, and the held request is then served."""
    rows = {}
    target = engine_sleep.Engine(engine.url, MODEL)
    async with aiohttp.ClientSession() as session:
        for level in (SleepLevel.OFFLOAD, SleepLevel.DISCARD):
            name = f"level {int(level)}"
            await engine_sleep.sleep(session, target, level, timeout=30)
            rows[f"{name}: is_sleeping after sleep()"] = str(await engine_sleep.is_sleeping(session, target, 5))
            pending = asyncio.create_task(post(session, f"{engine.url}/v1/completions", completion(5)))
            rows[f"{name}: a request while asleep"] = await unanswered(pending)
            await engine_sleep.wake(session, target, level, timeout=60)
            rows[f"{name}: wake() with its check"] = "ok"
            rows[f"{name}: that request after wake()"] = await finished(pending)
            rows[f"{name}: is_sleeping after wake()"] = str(await engine_sleep.is_sleeping(session, target, 5))
    assert all(rows[f"level {n}: a request while asleep"].startswith("unanswered") for n in (1, 2))
    return rows
