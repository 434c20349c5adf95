"""Wait for evidence, never sleep and hope: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.05


def eventually(
    condition: Callable[[], T], timeout: float, what: str = "the condition", explain: Callable[[], Any] = lambda: ""
) -> T:
    """Returns the first truthy value of `condition()`; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s {explain()}")
        time.sleep(POLL_SECONDS)


async def eventually_async(
    condition: Callable[[], Awaitable[T]],
    timeout: float,
    what: str = "the condition",
    explain: Callable[[], Any] = lambda: "",
) -> T:
    """`eventually` for a coroutine condition, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s {explain()}")
        await asyncio.sleep(POLL_SECONDS)
