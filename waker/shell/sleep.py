"""Sleep mode's side effects, composed into the supervisor: nginx's gate, putting an idle model to sleep
and waking it for its waiters.

A model in sleep mode (falling asleep, asleep or waking) has its gate closed in nginx, so that its
requests reach the waker (which wakes it) instead of an engine that would answer them asleep. The
gate closes before the engine is asked to sleep, and opens once it serves again. Every route renders
the current set of such models, one at a time, so that routes can never undo one another.

Each step re-checks the model's state after every await: a container death, a manual stop or a
reload may have changed it meanwhile, and then the step has nothing left to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

import structlog

from waker.config.schema import Config, ModelConfig
from waker.core.driver import Clock, Driver, Router
from waker.core.events import ModelAsleep, ModelAwake, SleepCalledOff, SleepFailed, WakeFailed
from waker.core.lifecycle import Event, SleepReason, State, StopReason
from waker.errors import NginxError, SleepModeError
from waker.shell.events import EventBus
from waker.shell.record import ModelRecord

log = structlog.get_logger("waker.sleep")

GATED = (State.FALLING_ASLEEP, State.SLEEPING, State.WAKING)


class Shell(Protocol):
    """What sleep mode needs of the supervisor (its commands, not its internals)."""

    config: Config
    bus: EventBus
    clock: Clock
    records: dict[str, ModelRecord]

    def driver_of(self, model_id: str) -> Driver: ...
    def transition(self, model_id: str, event: Event, **changes: Any) -> None: ...
    def update(self, model_id: str, **changes: Any) -> None: ...
    def stop(self, model_id: str, reason: StopReason, for_model: str | None = None) -> None: ...
    def reconcile(self) -> None: ...
    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None: ...


class SleepShell:
    def __init__(self, shell: Shell, router: Router | None) -> None:
        self.shell = shell
        self.router = router
        self._lock = asyncio.Lock()
        self._routed: frozenset[str] | None = frozenset()  # None: unknown (a route failed)

    @property
    def lock(self) -> asyncio.Lock:
        """Held while nginx is routed: a config reload takes it too, so routes never interleave."""
        return self._lock

    def gated(self) -> frozenset[str]:
        """The models whose requests must go to the waker: those in sleep mode."""
        return frozenset(m for m, r in self.shell.records.items() if r.slot.state in GATED)

    # ---- the gate -------------------------------------------------------------------------------

    def on_transition(self, before: State, after: State) -> None:
        """Called on every transition: leaving sleep mode (woken, called off, died) opens the gate."""
        if self.router is not None and (before in GATED) != (after in GATED):
            self.shell.spawn(self._route_logged())

    async def _route_logged(self) -> None:
        try:
            await self.route()
        except NginxError as exc:
            log.error("gate_route_failed", error=str(exc), asleep=sorted(self.gated()))

    async def route(self) -> None:
        """Has nginx route the current set of gated models, unless it already does."""
        assert self.router is not None
        async with self._lock:
            asleep = self.gated()
            if asleep == self._routed:
                return
            self._routed = None
            await self.router.route(self.shell.config, asleep)
            self._routed = asleep

    def routed(self, asleep: frozenset[str]) -> None:
        """Someone else (a config reload) has had nginx route `asleep` for `config`."""
        self._routed = asleep

    # ---- sleep ----------------------------------------------------------------------------------

    def _still(self, model_id: str, state: State) -> bool:
        record = self.shell.records.get(model_id)
        return record is not None and record.slot.state is state

    async def fall_asleep(self, model: ModelConfig, reason: SleepReason, for_model: str | None) -> None:
        """Carries out a `Sleep` (the model is falling asleep): gate closed, no work left, then sleep."""
        shell, began = self.shell, self.shell.clock.now()
        try:
            await self.route()
        except NginxError as exc:
            if self._still(model.id, State.FALLING_ASLEEP):
                self._call_off(model, f"nginx could not close its gate: {exc}")
            return
        if not self._still(model.id, State.FALLING_ASLEEP):
            return
        busy = await shell.driver_of(model.id).busy(model)
        if not self._still(model.id, State.FALLING_ASLEEP):
            return
        # Requests nginx passed on before the gate closed (or the engine's own count, after a waker
        # restart) call the sleep off: vLLM would abort them.
        in_flight = shell.records[model.id].activity.in_flight
        if busy or in_flight:
            self._call_off(model, "requests in flight", server_requests=busy or 0, in_flight=in_flight)
            return
        try:
            await shell.driver_of(model.id).sleep(model)
        except SleepModeError as exc:
            if self._still(model.id, State.FALLING_ASLEEP):
                shell.bus.publish(SleepFailed(model.id, exc.step, exc.timed_out, exc.message))
                shell.stop(model.id, StopReason.SLEEP_FAILED)
            return
        if not self._still(model.id, State.FALLING_ASLEEP):
            return
        shell.transition(model.id, Event.ASLEEP)
        shell.bus.publish(ModelAsleep(model.id, reason, for_model, round(shell.clock.now() - began, 3)))
        shell.reconcile()

    def _call_off(
        self, model: ModelConfig, why: str, server_requests: int | None = None, in_flight: int | None = None
    ) -> None:
        self.shell.transition(model.id, Event.RESUME, last_active=self.shell.clock.now())
        self.shell.bus.publish(SleepCalledOff(model.id, why, server_requests, in_flight))
        self.shell.reconcile()

    # ---- wake -----------------------------------------------------------------------------------

    async def wake(self, model: ModelConfig, asleep_since: float) -> None:
        """Carries out a `Wake` (the model is waking). A failed wake stops the model: its waiters stay
        queued, and the scheduler starts it cold for them once it has exited."""
        shell, began = self.shell, self.shell.clock.now()
        try:
            await shell.driver_of(model.id).wake(model)
        except SleepModeError as exc:
            if self._still(model.id, State.WAKING):
                failures = shell.records[model.id].slot.wake_failures + 1
                shell.update(model.id, wake_failures=failures)
                shell.bus.publish(WakeFailed(model.id, exc.step, exc.timed_out, exc.message, failures))
                shell.stop(model.id, StopReason.WAKE_FAILED)
            return
        if not self._still(model.id, State.WAKING):
            return
        now = shell.clock.now()
        shell.transition(model.id, Event.READY, ready_since=now, last_active=now, wake_failures=0)
        shell.bus.publish(ModelAwake(model.id, round(now - began, 3), round(began - asleep_since, 3)))
        shell.reconcile()  # its waiters are granted: nginx's @retry_ location needs no new route

    # ---- adoption -------------------------------------------------------------------------------

    async def found_asleep(self, model: ModelConfig) -> bool:
        """Whether a container found running (a waker restart) is asleep: then it stays so, gated."""
        if self.router is None or not model.sleep.enabled:
            return False
        try:
            return await self.shell.driver_of(model.id).is_sleeping(model)
        except SleepModeError as exc:
            log.warning("is_sleeping_failed", model=model.id, error=exc.message)
            return False

    def adopt_asleep(self, model_id: str) -> None:
        """A ready model found asleep: marked sleeping (its gate closes)."""
        self.shell.transition(model_id, Event.SLEEP)
        self.shell.transition(model_id, Event.ASLEEP)
