"""The clock the shell runs on outside the tests (the tests' is shell_fakes.FakeClock): the running event
loop's, so that its timers and the loop's own agree."""

from __future__ import annotations

import asyncio
import time

from waker.system.clock import LoopClock

SHORT = 0.01  # seconds: the real clock, so as short as can be told apart
EARLY = time.get_clock_info("monotonic").resolution  # asyncio runs a timer due within this much of now


async def test_now_is_the_loops_monotonic_time():
    loop, clock = asyncio.get_running_loop(), LoopClock()
    before = loop.time()
    now = clock.now()
    assert before <= now <= loop.time()


async def test_a_timer_fires_at_its_time_unless_cancelled():
    loop, clock = asyncio.get_running_loop(), LoopClock()
    fired: list[str] = []
    done = asyncio.Event()
    at = clock.now() + SHORT
    cancelled = clock.call_at(at, lambda: fired.append("cancelled"))
    clock.call_at(at, lambda: fired.append("kept"))
    clock.call_at(at + SHORT, done.set)  # the loop runs timers in time order: the two above come first
    cancelled.cancel()
    assert cancelled.when() == at
    async with asyncio.timeout(5):
        await done.wait()
    assert fired == ["kept"] and loop.time() >= at - EARLY


async def test_sleep_waits_at_least_its_time():
    loop, clock = asyncio.get_running_loop(), LoopClock()
    began = loop.time()
    await clock.sleep(SHORT)
    assert loop.time() - began >= SHORT - EARLY
