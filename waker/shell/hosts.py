"""What each host's engine says, for the supervisor: its Docker events (a container started by hand is
adopted, a death fails the model), its connection (lost, and back: a resync from a listing), and so
which hosts take starts now.

With one host (no `[[host]]`) a lost engine changes no model's state and the host still counts as up:
requests are refused at the door until it is back (`docker_error`), then a resync sets things right,
as before hosts existed. With several, a lost host's ready models are marked down at once (the
others keep serving), placement skips it, and it is back in the plan after its resync.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

import structlog

from waker.config.ray import RayNode
from waker.config.schema import Config
from waker.core.driver import Clock, ContainerChange, ContainerEvent, Timer
from waker.core.events import HostBack, HostLost, ModelExited, ModelOom
from waker.core.lifecycle import Event, State
from waker.core.plan import Policy, Slot
from waker.core.scheduler import held, hosts_of, occupying_on
from waker.errors import DriverError, StartError
from waker.shell.events import EventBus
from waker.shell.fleet import Fleet
from waker.shell.record import ModelRecord
from waker.shell.sleep import GATED

log = structlog.get_logger("waker.hosts")

NOT_CONNECTED = "not connected yet"
# With several hosts, how long the first decisions wait for a host's engine that neither answers nor
# fails (an ssh:// host that is off: the TCP connect only times out after minutes).
SETTLE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One host as the admin API, the dashboard and the metrics show it."""

    name: str
    gpu_capacity: float
    gpu_used: float  # what the models occupying it hold now (a sleeping one its sleep_memory)
    connected: bool
    error: str | None  # why its engine does not answer
    models: tuple[str, ...]  # the models occupying it


class Shell(Protocol):
    """What the watch needs of the supervisor (its commands, not its internals)."""

    config: Config
    bus: EventBus
    clock: Clock
    records: dict[str, ModelRecord]
    policy: Policy

    def transition(self, model_id: str, event: Event, **changes: Any) -> None: ...
    def update(self, model_id: str, **changes: Any) -> None: ...
    def fail(self, model_id: str, exc: StartError, **changes: Any) -> None: ...
    def adopt(self, model_id: str, container_id: str, hosts: tuple[str, ...]) -> None: ...
    def tear_down(self, model_id: str) -> None: ...
    def reconcile(self) -> None: ...
    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...


class HostWatch:
    def __init__(self, shell: Shell, fleet: Fleet) -> None:
        self.shell = shell
        self.fleet = fleet
        self.errors: dict[str, str | None] = dict.fromkeys(fleet.names, NOT_CONNECTED)
        self._heard: set[str] = set()  # hosts synced or found lost at least once
        self._settle: Timer | None = None

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

    def status(self, slots: dict[str, Slot]) -> list[HostStatus]:
        policy = self.shell.policy
        result = []
        for budget in policy.budgets:
            there = occupying_on(slots, (budget.name,), policy)
            error = self.errors.get(budget.name)
            result.append(
                HostStatus(
                    budget.name,
                    budget.capacity,
                    round(sum(held(s) for s in there), 6),
                    error is None,
                    error,
                    tuple(sorted(s.id for s in there)),
                )
            )
        return result

    def policy(self, policy: Policy) -> Policy:
        """`policy` with each host's `up` as its engine is now (one host is always up, see above)."""
        if not self.several:
            return policy
        return replace(policy, hosts=tuple(replace(b, up=self.errors.get(b.name) is None) for b in policy.hosts))

    def open(self) -> None:
        for name, driver in self.fleet.drivers.items():
            self.shell.spawn(
                driver.follow(partial(self._on_event, name), partial(self._resync, name), partial(self._lost, name))
            )
        if self.several:
            self._settle = self.shell.clock.call_at(self.shell.clock.now() + SETTLE_SECONDS, self._stop_waiting)

    def close(self) -> None:
        if self._settle is not None:
            self._settle.cancel()

    def _stop_waiting(self) -> None:
        for host in [h for h in self.errors if h not in self._heard]:
            self._lost(host, f"its engine did not answer within {SETTLE_SECONDS:g} s of the waker's start")

    async def _resync(self, host: str) -> None:
        """Rebuilds what runs on `host` from what its driver finds: running containers are adopted
        (never restarted), models believed ready there whose container is gone are marked stopped."""
        running = await self.fleet.drivers[host].running()
        for model_id, record in self.shell.records.items():
            state, here = record.slot.state, self._head_here(record, host)
            if model_id in running and state in (State.STOPPED, State.FAILED):
                self.shell.adopt(model_id, running[model_id], self._adopted_hosts(model_id, host))
            elif model_id not in running and here and state in (State.READY, State.SLEEPING):
                record.container = None
                self.shell.transition(model_id, Event.EXITED)
            elif model_id in running and not self._on_host(record, host):
                # It ran here when this host went away, and runs elsewhere now: this copy would hold
                # the GPU unseen by the scheduler.
                self.shell.spawn(self._stop_stray(host, model_id, running[model_id]))
        was_down = self.errors[host] is not None and host in self._heard
        self.errors[host] = None
        self._heard.add(host)
        if was_down and self.several:
            self.shell.bus.publish(HostBack(host))
        self.shell.reconcile()

    async def _stop_stray(self, host: str, model_id: str, container_id: str) -> None:
        model = self.shell.config.model(model_id)
        assert model is not None
        log.warning(
            "stray_container_stopped",
            model=model_id,
            host=host,
            container=container_id[:12],
            runs_on=list(hosts_of(self.shell.records[model_id].slot, self.shell.policy)),
        )
        try:
            await self.fleet.drivers[host].down(model, container_id)
        except DriverError as exc:
            log.error("stray_container_stop_failed", model=model_id, host=host, error=str(exc))

    def _lost(self, host: str, reason: str) -> None:
        first = host not in self._heard or self.errors[host] is None
        self.errors[host] = reason
        self._heard.add(host)
        if not self.several:
            return
        gone = [
            m
            for m, r in self.shell.records.items()
            if self._on_host(r, host) and r.slot.state in (State.READY, State.SLEEPING)
        ]
        for model_id in gone:
            self.shell.records[model_id].container = None
            self.shell.transition(model_id, Event.EXITED)
        if first:
            self.shell.bus.publish(HostLost(host, reason, tuple(gone)))
        self.shell.reconcile()

    def _on_event(self, host: str, event: ContainerEvent) -> None:
        record = self.shell.records.get(event.model_id)
        if record is None:
            return
        state = record.slot.state
        if event.change is ContainerChange.OOM:
            self.shell.bus.publish(ModelOom(event.model_id))
        elif event.change is ContainerChange.STARTED:
            # While we run nothing: started by hand. (A Ray worker is never its model: its head is.)
            if state in (State.STOPPED, State.FAILED) and event.ray_node is not RayNode.WORKER:
                self.shell.adopt(event.model_id, event.container_id, self._adopted_hosts(event.model_id, host))
        elif self._on_host(record, host):  # a death elsewhere is an old container's
            self._died(record, host, event)

    def _died(self, record: ModelRecord, host: str, event: ContainerEvent) -> None:
        state = record.slot.state
        if state is State.STARTING:
            record.died.set()
        elif state is State.READY or state in GATED:
            # Unasked-for, whatever the code: vLLM exits 0 after its engine core died.
            self.shell.bus.publish(ModelExited(event.model_id, event.exit_code))
            doing = "serving" if state is State.READY else state.value.replace("_", " ")
            message = f"model {event.model_id!r} exited with code {event.exit_code} while {doing}"
            if self.several:
                message += f" on host '{host}'"
            record.container = None
            waking = {"wake_failures": record.slot.wake_failures + 1} if state is State.WAKING else {}
            self.shell.fail(event.model_id, StartError(503, "model_exited", message), **waking)
            if len(hosts_of(record.slot, self.shell.policy)) > 1:
                self.shell.tear_down(event.model_id)  # the other half of the pair cannot serve alone
            self.shell.spawn(self._add_log_tail(event.model_id, event.container_id, message))
            self.shell.reconcile()

    async def _add_log_tail(self, model_id: str, container_id: str, message: str) -> None:
        """Completes a crash's message with the container's last log lines (fetched after the fact, so
        the state changes at once), unless something newer has replaced the message meanwhile."""
        record = self.shell.records.get(model_id)
        if record is None:
            return
        try:
            tail = await self.fleet.of(hosts_of(record.slot, self.shell.policy)).log_tail(container_id)
        except DriverError:
            return
        if tail and record.slot.state is State.FAILED and record.slot.last_error == message:
            self.shell.update(model_id, last_error=f"{message}; last log lines:\n{tail}")

    def _on_host(self, record: ModelRecord, host: str) -> bool:
        return host in hosts_of(record.slot, self.shell.policy)

    def _head_here(self, record: ModelRecord, host: str) -> bool:
        return hosts_of(record.slot, self.shell.policy)[0] == host

    def _adopted_hosts(self, model_id: str, host: str) -> tuple[str, ...]:
        """A container found running on `host` serves its model from there; a model over two hosts
        has its head there and its worker on the other host of a two-host set-up."""
        if self.shell.records[model_id].slot.host_count < 2:
            return (host,)
        return (host, next(name for name in self.errors if name != host))
