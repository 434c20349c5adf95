"""The waker's sleep adapter (waker/engine/sleep.py) against what vLLM's CPU build cannot show, played
by the fake: wakes that hang, crash or leave a wedged engine (the GB10 reports in shared/real-vllm.md),
the wake's latency, and the memory held awake and asleep. The protocol itself, at both levels, is
checked against the real engine in test_fidelity.py ("the waker's sleep adapter")."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from tests.e2e.engine_probe import MODEL, Engine, start_engine
from tests.eventually import eventually
from waker.config.sleep import SleepLevel
from waker.engine import sleep as engine_sleep
from waker.errors import SleepModeError, SleepStep

pytestmark = pytest.mark.e2e


def fake(*flags: str, config: str = "main") -> Engine:
    return asyncio.run(start_engine("fake", config, list(flags)))


async def sleep_then_wake(engine: Engine, level: SleepLevel, wake_timeout: float) -> None:
    target = engine_sleep.Engine(engine.url, MODEL)
    async with aiohttp.ClientSession() as session:
        await engine_sleep.sleep(session, target, level, timeout=10)
        await engine_sleep.wake(session, target, level, timeout=wake_timeout)


def failed_wake(engine: Engine, level: SleepLevel, wake_timeout: float = 2) -> SleepModeError:
    with pytest.raises(SleepModeError) as caught:
        asyncio.run(sleep_then_wake(engine, level, wake_timeout))
    return caught.value


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


@pytest.fixture
def engines():
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.remove()


@pytest.mark.parametrize(
    ("level", "step"), [(SleepLevel.OFFLOAD, SleepStep.WAKE), (SleepLevel.DISCARD, SleepStep.WAKE_KV_CACHE)]
)
def test_a_wake_that_hangs_fails_at_its_deadline_naming_the_step(engines, level, step):
    engines.append(engine := fake("--wake-fail", "hang"))
    began = time.monotonic()
    error = failed_wake(engine, level, wake_timeout=2)
    assert error.timed_out and error.step is step and "not done within 2 s" in error.message
    assert time.monotonic() - began < 10
    assert asyncio.run(get(f"{engine.url}/is_sleeping")) == (200, '{"is_sleeping":true}')


def test_a_wake_that_crashes_the_engine_fails_at_once(engines):
    engines.append(engine := fake("--wake-fail", "crash"))
    error = failed_wake(engine, SleepLevel.OFFLOAD, wake_timeout=30)
    assert not error.timed_out and error.step is SleepStep.WAKE and "POST /wake_up failed" in error.message
    eventually(lambda: engine.state() == (False, 1), 10, "the fake engine exiting with code 1")
    assert "illegal memory access" in engine.logs()


def test_a_wedged_engine_is_caught_by_the_check_completion_though_health_says_200(engines):
    engines.append(engine := fake("--wake-fail", "wedge"))
    error = failed_wake(engine, SleepLevel.DISCARD, wake_timeout=2)
    assert error.timed_out and error.step is SleepStep.CHECK_SERVES
    assert asyncio.run(get(f"{engine.url}/health"))[0] == 200
    assert asyncio.run(get(f"{engine.url}/is_sleeping")) == (200, '{"is_sleeping":false}')


def test_without_dev_mode_the_error_says_what_the_engine_needs(engines):
    engines.append(engine := fake(config="plain"))
    with pytest.raises(SleepModeError) as caught:
        asyncio.run(sleep_then_wake(engine, SleepLevel.OFFLOAD, 5))
    assert caught.value.step is SleepStep.SLEEP and "VLLM_SERVER_DEV_MODE=1" in caught.value.message


def test_the_fake_reports_the_memory_it_holds_and_takes_its_wake_latency(engines):
    engines.append(engine := fake("--gpu-memory-utilization", "0.5", "--sleep-memory", "0.05", "--wake-delay", "1"))

    def held() -> float:
        text = asyncio.run(get(f"{engine.url}/metrics"))[1]
        return float(re.search(r"^fake:gpu_memory_held\{[^}]*\} (\S+)$", text, re.MULTILINE).group(1))

    target = engine_sleep.Engine(engine.url, MODEL)

    async def sleep() -> None:
        async with aiohttp.ClientSession() as session:
            await engine_sleep.sleep(session, target, SleepLevel.DISCARD, timeout=10)

    async def wake() -> float:
        async with aiohttp.ClientSession() as session:
            began = time.monotonic()
            await engine_sleep.wake(session, target, SleepLevel.DISCARD, timeout=10)
            return time.monotonic() - began

    assert held() == 0.5
    asyncio.run(sleep())
    assert held() == 0.05
    assert asyncio.run(wake()) >= 1.0
    assert held() == 0.5
