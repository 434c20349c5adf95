"""The memory guard: samples this machine's memory (every REST_INTERVAL seconds, every BUSY_INTERVAL
while a model starts or wakes, when memory grows fastest) and, when what is available falls below
`[scheduler] memory_floor`, has the supervisor stop the model `core.memory.victim` names. It also
gives the scheduler the host's memory to weigh starts against (`view`), and asks for a new decision
while requests wait, since memory changes without an event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from waker.core.driver import Clock
from waker.core.lifecycle import State
from waker.core.memory import HostMemory, Trip, victim
from waker.core.plan import MemoryView, Policy, Slot
from waker.core.scheduler import hosts_of

log = structlog.get_logger("waker.shell.memory_guard")

REST_INTERVAL = 2.0
BUSY_INTERVAL = 0.2


class Guarded(Protocol):
    """What the guard reads of the supervisor and asks of it."""

    policy: Policy

    @property
    def releasing(self) -> frozenset[str]: ...
    def current_slots(self) -> dict[str, Slot]: ...
    def memory_trip(self, trip: Trip, memory: HostMemory, floor: int) -> None: ...
    def has_waiters(self) -> bool: ...
    def reconcile(self) -> None: ...


class MemoryGuard:
    def __init__(self, read: Callable[[], HostMemory], clock: Clock, host: str, floor: Callable[[], int]) -> None:
        self.read = read
        self.clock = clock
        self.host = host  # the host (of the policy's budgets) whose memory `read` measures
        self.floor = floor  # the config in force's floor, read at each sample (a reload changes it)
        self.latest: HostMemory | None = None
        self._task: asyncio.Task[None] | None = None

    def view(self, releasing: frozenset[str]) -> MemoryView | None:
        """The host's memory read now, as the scheduler weighs a start (not at all with a floor of 0);
        None if it cannot be read."""
        floor = self.floor()
        try:
            self.latest = memory = self.read()
        except (OSError, KeyError, ValueError) as exc:
            log.error("memory_unreadable", error=repr(exc))
            return None
        return MemoryView(memory.available, memory.total, floor, bool(releasing))

    def open(self, guarded: Guarded) -> None:
        self._task = asyncio.create_task(self._run(guarded), name="memory_guard")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, guarded: Guarded) -> None:
        while True:
            slots = self._here(guarded)
            floor = self.floor()
            try:
                self.latest = memory = self.read()
            except (OSError, KeyError, ValueError) as exc:  # /proc/meminfo as we know it is gone: no guard
                log.error("memory_unreadable", error=repr(exc), retry_in=REST_INTERVAL)
                await self.clock.sleep(REST_INTERVAL)
                continue
            trip = victim(slots, memory, floor, guarded.releasing)
            if trip is not None:
                guarded.memory_trip(trip, memory, floor)
            elif guarded.has_waiters():  # a request may wait for memory, which changes without an event
                guarded.reconcile()
            coming_up = any(s.state in (State.STARTING, State.WAKING) for s in slots)
            busy = coming_up or guarded.releasing or guarded.has_waiters()
            await self.clock.sleep(BUSY_INTERVAL if busy else REST_INTERVAL)

    def _here(self, guarded: Guarded) -> list[Slot]:
        return [s for s in guarded.current_slots().values() if self.host in hosts_of(s, guarded.policy)]
