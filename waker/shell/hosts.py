"""Each host's engine as the supervisor needs it: whether it answers (connected, lost, back), which
hosts take starts now, and what its driver reports, handed to the supervisor's commands (the
supervisor alone changes model state).

With one host (no `[[host]]`) a lost engine changes no model's state and the host still counts as up:
requests are refused at the door until it is back (`docker_error`), then a resync sets things right.
With several, a lost host's running models are marked down at once (the others keep serving),
placement skips it, and it is back in the plan after its resync.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

from waker.core.driver import Clock, ContainerEvent, Timer
from waker.core.plan import Policy, Slot
from waker.core.scheduler import held, occupying_on
from waker.shell.fleet import Fleet

NOT_CONNECTED = "not connected yet"
# With several hosts, how long the first decisions wait for a host's engine that neither answers nor
# fails (an ssh:// host that is off: the TCP connect only times out after minutes).
SETTLE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class MemoryStatus:
    """A host's memory, measured (this machine's from /proc/meminfo, another's through its engine),
    with the floor the guard keeps there."""

    total_bytes: int
    available_bytes: int
    floor_bytes: int


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One host as the admin API, the dashboard and the metrics show it."""

    name: str
    gpu_capacity: float
    gpu_used: float  # what the models occupying it hold now (a sleeping one its sleep_memory)
    connected: bool
    error: str | None  # why its engine does not answer
    models: tuple[str, ...]  # the models occupying it
    memory: MemoryStatus | None = None  # None: not measured (no guard, or no reading: see memory_error)
    memory_error: str | None = None  # why its memory cannot be read now


class Reports(Protocol):
    """The supervisor's commands for what a host's engine reports."""

    def container_event(self, host: str, event: ContainerEvent) -> None: ...
    def host_listed(self, host: str, running: dict[str, str], back: bool) -> None: ...
    def host_lost(self, host: str, reason: str, first: bool) -> None: ...
    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...


class Hosts:
    def __init__(self, fleet: Fleet, clock: Clock) -> None:
        self.fleet = fleet
        self.clock = clock
        self.errors: dict[str, str | None] = dict.fromkeys(fleet.names, NOT_CONNECTED)
        self._heard: set[str] = set()  # hosts listed or found lost at least once
        self._settle: Timer | None = None
        self._reports: Reports | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.errors)

    @property
    def several(self) -> bool:
        return len(self.errors) > 1

    @property
    def settled(self) -> bool:
        """Every host has been listed or found unreachable once: deciding before would be guessing."""
        return self._heard == set(self.errors)

    @property
    def docker_error(self) -> str | None:
        """Why no request can be served at all: every host's engine is unreachable."""
        down = self.down()
        if len(down) < len(self.errors):
            return None
        if not self.several:
            return next(iter(down.values()))
        return "; ".join(f"host '{name}': {error}" for name, error in down.items())

    def down(self) -> dict[str, str]:
        return {name: error for name, error in self.errors.items() if error is not None}

    def status(
        self, slots: dict[str, Slot], policy: Policy, memory_errors: Mapping[str, str | None] | None = None
    ) -> list[HostStatus]:
        result = []
        for budget in policy.budgets:
            there = occupying_on(slots, (budget.name,), policy)
            error = self.errors.get(budget.name)
            used = round(sum(held(s) for s in there), 6)
            models = tuple(sorted(s.id for s in there))
            view = budget.memory
            memory = MemoryStatus(view.total, view.available, view.floor) if view is not None else None
            memory_error = (memory_errors or {}).get(budget.name)
            result.append(
                HostStatus(budget.name, budget.capacity, used, error is None, error, models, memory, memory_error)
            )
        return result

    def policy(self, policy: Policy) -> Policy:
        """`policy` with each host's `up` as its engine is now (one host is always up, see above)."""
        if not self.several:
            return policy
        return replace(policy, hosts=tuple(replace(b, up=self.errors.get(b.name) is None) for b in policy.hosts))

    def open(self, reports: Reports) -> None:
        """Follows each host's engine, handing what it reports to `reports`."""
        self._reports = reports
        for name, driver in self.fleet.drivers.items():
            reports.spawn(
                driver.follow(
                    partial(reports.container_event, name), partial(self._listed, name), partial(self._lost, name)
                )
            )
        if self.several:
            self._settle = self.clock.call_at(self.clock.now() + SETTLE_SECONDS, self._stop_waiting)

    def close(self) -> None:
        if self._settle is not None:
            self._settle.cancel()

    def _stop_waiting(self) -> None:
        for host in [h for h in self.errors if h not in self._heard]:
            self._lost(host, f"its engine did not answer within {SETTLE_SECONDS:g} s of the waker's start")

    async def _listed(self, host: str) -> None:
        """The engine's events stream is (re)opened: what runs there now is listed, then it counts as up."""
        assert self._reports is not None
        running = await self.fleet.drivers[host].running()
        back = self.errors[host] is not None and host in self._heard
        self.errors[host] = None
        self._heard.add(host)
        self._reports.host_listed(host, running, back=back and self.several)

    def _lost(self, host: str, reason: str) -> None:
        assert self._reports is not None
        first = host not in self._heard or self.errors[host] is None
        self.errors[host] = reason
        self._heard.add(host)
        self._reports.host_lost(host, reason, first)
