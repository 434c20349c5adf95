"""The event loop's clock, the `core.driver.Clock` the shell runs on outside the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from waker.core.driver import Timer


class LoopClock:
    """The event loop's monotonic clock: what `loop.call_at` counts in."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_at(when, callback)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
