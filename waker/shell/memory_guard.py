"""The memory guard: samples this machine's memory (every REST_INTERVAL seconds, every BUSY_INTERVAL
while a model starts or wakes, when memory grows fastest, or while requests wait) and, when what is
available falls below `[scheduler] memory_floor`, has the supervisor stop the model
`core.memory.victim` names. It gives the scheduler the host's memory to weigh starts against
(`view`), asks for a new decision while requests wait (memory changes without an event), and learns
each model's footprint: the fall in available memory over its start, or its container's memory once
it serves if that is more, kept in the state directory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from waker.core.driver import Clock, Memory
from waker.core.lifecycle import State
from waker.core.memory import ContainerMemory, HostMemory, Trip, gib, page_cache_in_the_way, victim
from waker.core.plan import MemoryView, Policy, Slot
from waker.core.scheduler import hosts_of

log = structlog.get_logger("waker.shell.memory_guard")

REST_INTERVAL = 2.0
BUSY_INTERVAL = 0.2
UNREADABLE = (OSError, KeyError, ValueError)  # /proc/meminfo missing or not as Linux writes it


class Guarded(Protocol):
    """What the guard reads of the supervisor and asks of it."""

    policy: Policy

    @property
    def releasing(self) -> frozenset[str]: ...
    def current_slots(self) -> dict[str, Slot]: ...
    def memory_trip(self, trip: Trip, memory: HostMemory, floor: int) -> None: ...
    def has_waiters(self) -> bool: ...
    def reconcile(self) -> None: ...
    async def container_memory(self, model_id: str) -> ContainerMemory | None: ...


class MemoryGuard:
    def __init__(self, memory: Memory, clock: Clock, host: str, floor: Callable[[], int]) -> None:
        self.memory = memory
        self.clock = clock
        self.host = host  # the host (of the policy's budgets) whose memory `memory` measures
        self.floor = floor  # the config in force's floor, read at each sample (a reload changes it)
        self.latest: HostMemory | None = None
        self.learned: dict[str, int] = memory.learned()  # model -> bytes its last start took
        self._starts: dict[str, tuple[int, int]] = {}  # model starting -> (available before, lowest since)
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reading: set[asyncio.Task[None]] = set()  # containers' memory being read, off the loop

    def view(self, releasing: frozenset[str]) -> MemoryView | None:
        """The host's memory read now, as the scheduler weighs a start; None if it cannot be read."""
        try:
            self.latest = memory = self.memory.read()
        except UNREADABLE as exc:
            log.error("memory_unreadable", error=repr(exc))
            return None
        return MemoryView(memory.available, memory.total, self.floor(), bool(releasing))

    async def free_for(self, need: int) -> tuple[int, int] | None:
        """Drops the kernel's clean caches when free memory cannot cover `need` above the floor but
        reclaimable cache can (`core.memory.page_cache_in_the_way`); (free before, free after) when
        it did, None when there was no need or it could not."""
        try:
            before = self.memory.read()
            if not page_cache_in_the_way(before, need, self.floor()):
                return None
            await asyncio.to_thread(self.memory.drop_page_cache)
            after = self.memory.read()
        except UNREADABLE as exc:
            log.error("page_cache_drop_failed", error=str(exc))
            return None
        self.latest = after
        return before.free, after.free

    def poke(self) -> None:
        """A start or wake began: sample now, and often, rather than at the end of a rest interval."""
        self._poked.set()

    def open(self, guarded: Guarded) -> None:
        self._task = asyncio.create_task(self._run(guarded), name="memory_guard")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._reading) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, guarded: Guarded) -> None:
        while True:
            slots = self._here(guarded)
            before, floor = self.latest, self.floor()
            try:
                self.latest = memory = self.memory.read()
            except UNREADABLE as exc:
                log.error("memory_unreadable", error=repr(exc), retry_in=REST_INTERVAL)
                await self._pause(REST_INTERVAL)
                continue
            self._learn(guarded, slots, memory, before)
            trip = victim(slots, memory, floor, guarded.releasing)
            if trip is not None:
                guarded.memory_trip(trip, memory, floor)
            elif guarded.has_waiters():  # a request may wait for memory, which changes without an event
                guarded.reconcile()
            coming_up = any(s.state in (State.STARTING, State.WAKING) for s in slots)
            busy = coming_up or guarded.releasing or guarded.has_waiters()
            await self._pause(BUSY_INTERVAL if busy else REST_INTERVAL)

    async def _pause(self, seconds: float) -> None:
        sleep, poked = asyncio.ensure_future(self.clock.sleep(seconds)), asyncio.ensure_future(self._poked.wait())
        try:
            await asyncio.wait((sleep, poked), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            poked.cancel()
            self._poked.clear()

    def _learn(self, guarded: Guarded, slots: list[Slot], memory: HostMemory, before: HostMemory | None) -> None:
        """A start's footprint: available memory before it (the reading its start was decided on)
        minus the lowest seen until it is ready, or what its container holds once ready if that is
        more (something else freed memory meanwhile). A start that failed (the guard's kill
        included) took at least what it had taken by then."""
        states = {s.id: s.state for s in slots}
        for model in (m for m, state in states.items() if state is State.STARTING and m not in self._starts):
            self._starts[model] = ((before or memory).available, memory.available)
        for model, (baseline, lowest) in list(self._starts.items()):
            lowest = min(lowest, memory.available)
            if states.get(model) is State.STARTING:
                self._starts[model] = (baseline, lowest)
                continue
            del self._starts[model]
            taken = max(0, baseline - lowest)
            if states.get(model) is State.READY:
                task = asyncio.create_task(self._learn_ready(guarded, model, taken), name="footprint")
                self._reading.add(task)
                task.add_done_callback(self._reading.discard)
            elif states.get(model) is State.FAILED:
                self._learned(model, max(self.learned.get(model, 0), taken), taken)

    async def _learn_ready(self, guarded: Guarded, model: str, taken: int) -> None:
        held = await guarded.container_memory(model)
        container = held.current if held is not None else None
        self._learned(model, max(taken, container or 0), taken, container)

    def _learned(self, model: str, footprint: int, host_fall: int, container: int | None = None) -> None:
        """`footprint` kept for `model`; the figures it comes from, logged (the host's fall in
        available memory over the start, and the container's own once ready)."""
        if footprint == self.learned.get(model):
            return
        self.learned[model] = footprint
        log.info(
            "footprint_learned",
            model=model,
            bytes=footprint,
            text=gib(footprint),
            host_fall_bytes=host_fall,
            container_bytes=container,
        )
        try:
            self.memory.remember(self.learned)
        except OSError as exc:
            log.error("footprints_not_kept", error=str(exc))

    def _here(self, guarded: Guarded) -> list[Slot]:
        return [s for s in guarded.current_slots().values() if self.host in hosts_of(s, guarded.policy)]
