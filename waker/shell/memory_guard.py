"""The memory guard, one per host whose memory can be read: this machine's from /proc/meminfo, a
remote host's through its Docker engine (`HostDriver.host_memory`). Each samples (every
REST_INTERVAL seconds, more often while a model starts or wakes, when memory grows fastest, or while
requests wait) and, when what is available falls below the host's floor (`[[host]] memory_floor`, else
`[scheduler] memory_floor`), has the supervisor stop the model `core.memory.victim` names. It gives the
scheduler the host's memory to weigh starts against (`view`), asks for a new decision while requests
wait (memory changes without an event), and learns the footprint of each model whose (head) container
runs there: the fall in available memory over its start, or its container's memory once it serves if
that is more, kept in the state directory (`Footprints`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from waker.config.hosts import IMPLICIT_HOST
from waker.core.driver import Clock, Memory
from waker.core.lifecycle import State
from waker.core.memory import ContainerMemory, HostMemory, Trip, gib, page_cache_in_the_way, victim
from waker.core.plan import MemoryView, Policy, Slot
from waker.core.scheduler import hosts_of
from waker.errors import DriverError

log = structlog.get_logger("waker.shell.memory_guard")

REST_INTERVAL = 2.0
BUSY_INTERVAL = 0.2
ENGINE_BUSY_INTERVAL = 0.5  # a remote host's probe writes a reading this often (`docker.memory_probe`)
STALE = 10.0  # a remote host's last reading older than this is no reading: its engine stopped answering
# /proc/meminfo missing or not as Linux writes it; a remote host's engine not answering, or no probe
UNREADABLE = (OSError, KeyError, ValueError, DriverError)


class Footprints:
    """Each model's footprint (bytes its last start took), learned by the guard of the host its
    (head) container runs on, and kept for the next run."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.learned: dict[str, int] = memory.learned()

    def learn(self, model: str, footprint: int, host_fall: int, container: int | None = None) -> None:
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


class Guarded(Protocol):
    """What the guard reads of the supervisor and asks of it."""

    policy: Policy

    @property
    def releasing(self) -> frozenset[str]: ...
    def current_slots(self) -> dict[str, Slot]: ...
    def memory_trip(self, trip: Trip, memory: HostMemory, floor: int, host: str) -> None: ...
    def has_waiters(self) -> bool: ...
    def reconcile(self) -> None: ...
    async def container_memory(self, model_id: str) -> ContainerMemory | None: ...


class MemoryGuard:
    """The guard of one host. `read` samples its memory; `machine`, for this machine's host, reads it
    at once (a decision weighs memory as it is now) and can drop its page cache; `end` removes what
    reading a remote host left there, when the waker stops."""

    def __init__(
        self,
        host: str,
        read: Callable[[], Awaitable[HostMemory]],
        clock: Clock,
        floor: Callable[[], int],
        footprints: Footprints,
        machine: Memory | None = None,
        end: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host  # the host (of the policy's budgets) whose memory `read` measures
        self.read = read
        self.clock = clock
        self.floor = floor  # the config in force's floor, read at each sample (a reload changes it)
        self.footprints = footprints
        self.machine = machine
        self.end = end
        self.busy_interval = BUSY_INTERVAL if machine is not None else ENGINE_BUSY_INTERVAL
        self.latest: HostMemory | None = None
        self.latest_at = 0.0
        self.error: str | None = None  # why the last sample failed
        self._starts: dict[str, tuple[int, int]] = {}  # model starting -> (available before, lowest since)
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reading: set[asyncio.Task[None]] = set()  # containers' memory being read, off the loop

    @classmethod
    def of_this_machine(
        cls, host: str, machine: Memory, clock: Clock, floor: Callable[[], int], footprints: Footprints
    ) -> MemoryGuard:
        async def read() -> HostMemory:
            return machine.read()

        return cls(host, read, clock, floor, footprints, machine=machine)

    def view(self, releasing: frozenset[str]) -> MemoryView | None:
        """The host's memory as the scheduler weighs a start (this machine's read now, a remote
        host's last reading); None if it cannot be read."""
        if self.machine is not None:
            try:
                self._sampled(self.machine.read())
            except UNREADABLE as exc:
                self._failed(exc)
        elif self.clock.now() - self.latest_at > STALE:
            return None
        if self.latest is None or self.error is not None:
            return None
        return MemoryView(self.latest.available, self.latest.total, self.floor(), bool(releasing))

    async def free_for(self, need: int) -> tuple[int, int] | None:
        """Drops the kernel's clean caches when free memory cannot cover `need` above the floor but
        reclaimable cache can (`core.memory.page_cache_in_the_way`); (free before, free after) when
        it did, None when there was no need, or it could not (a remote host's cannot be)."""
        if self.machine is None:
            return None
        try:
            before = self.machine.read()
            if not page_cache_in_the_way(before, need, self.floor()):
                return None
            await asyncio.to_thread(self.machine.drop_page_cache)
            after = self.machine.read()
        except UNREADABLE as exc:
            log.error("page_cache_drop_failed", error=str(exc))
            return None
        self._sampled(after)
        return before.free, after.free

    def poke(self) -> None:
        """A start or wake began: sample now, and often, rather than at the end of a rest interval."""
        self._poked.set()

    def open(self, guarded: Guarded) -> None:
        self._task = asyncio.create_task(self._run(guarded), name=f"memory_guard:{self.host}")
        self._task.add_done_callback(lambda task: self._ended(task, guarded))

    def _ended(self, task: asyncio.Task[None], guarded: Guarded) -> None:
        """A guard must not end while the waker runs: a bug in a sample is logged, and it goes on."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("memory_guard_crashed", host=self.host, error=repr(task.exception()))
        self.open(guarded)

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._reading) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.end is not None:
            try:
                await asyncio.wait_for(self.end(), 5)
            except (DriverError, TimeoutError) as exc:
                log.warning("memory_probe_left", host=self.host, error=str(exc) or "no answer in 5 s")

    async def _run(self, guarded: Guarded) -> None:
        while True:
            before, floor = self.latest, self.floor()
            try:
                memory = self._sampled(await self.read())
            except UNREADABLE as exc:
                self._failed(exc)
                await self._pause(REST_INTERVAL)
                continue
            slots = self._here(guarded)  # after the read: a remote one waits on the engine meanwhile
            self._learn(guarded, slots, memory, before)
            where = "the host" if self.host == IMPLICIT_HOST else f"host {self.host!r}"
            releasing = guarded.releasing & {s.id for s in slots}  # this host's memory on its way back
            trip = victim(slots, memory, floor, releasing, where)
            if trip is not None:
                guarded.memory_trip(trip, memory, floor, self.host)
            elif guarded.has_waiters():  # a request may wait for memory, which changes without an event
                guarded.reconcile()
            coming_up = any(s.state in (State.STARTING, State.WAKING) for s in slots)
            busy = coming_up or releasing or guarded.has_waiters()
            await self._pause(self.busy_interval if busy else REST_INTERVAL)

    def _sampled(self, memory: HostMemory) -> HostMemory:
        if self.error is not None:
            log.info("memory_readable", host=self.host)
        self.latest, self.latest_at, self.error = memory, self.clock.now(), None
        return memory

    def _failed(self, exc: BaseException) -> None:
        """Logged once until it reads again or fails otherwise: a remote host without a probe image
        would say so every sample."""
        error = str(exc) or repr(exc)
        if error != self.error:
            log.error("memory_unreadable", host=self.host, error=error, retry_in=REST_INTERVAL)
        self.error = error

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
        included) took at least what it had taken by then. A model over two hosts is learned on its
        head's."""
        states = {s.id: s.state for s in slots if hosts_of(s, guarded.policy)[0] == self.host}
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
                self.footprints.learn(model, max(self.footprints.learned.get(model, 0), taken), taken)

    async def _learn_ready(self, guarded: Guarded, model: str, taken: int) -> None:
        held = await guarded.container_memory(model)
        container = held.current if held is not None else None
        self.footprints.learn(model, max(taken, container or 0), taken, container)

    def _here(self, guarded: Guarded) -> list[Slot]:
        return [s for s in guarded.current_slots().values() if self.host in hosts_of(s, guarded.policy)]
