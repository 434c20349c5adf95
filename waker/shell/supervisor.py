"""The imperative shell around the scheduler: holds the state, feeds it to `scheduler.decide`, and
carries out the plan (engine starts and stops through the driver, answers to waiting requests).

Inputs: wake requests from nginx (`acquire`), activity marks from nginx (`on_activity`), the driver's
container events, and timers that `decide` asks for. Nothing polls: at idle the waker sleeps. The
world is reached only through what is passed in: a `Fleet` (a `Driver` per host: engines and
containers), a `Clock` (time and timers) and an `EventBus` (what happens, for the admin API, metrics
and logs); sleep mode (`sleep_shell`) also needs a `Router`, nginx's gate: without one, no model
sleeps. What each host's engine reports is `host_watch`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import asdict, replace
from typing import Any

import structlog

from waker.config.fields import Address
from waker.config.schema import Config, ModelConfig
from waker.core.driver import Clock, Driver, Router, Timer
from waker.core.events import (
    ConfigReloaded,
    ContainerAdopted,
    IdleStopPostponed,
    ModelBackoff,
    ModelReady,
    ModelStateChanged,
    ModelStopped,
    ModelUnreachable,
    RequestAbandoned,
    RequestQueued,
    RequestRefusal,
)
from waker.core.lifecycle import Event, SleepReason, State, StopReason, next_state
from waker.core.plan import Grant, HostBudget, Plan, Policy, Refuse, Sleep, Slot, Start, Stop, Wake
from waker.core.reload import ConfigChange
from waker.core.scheduler import decide, hosts_of
from waker.errors import DriverError, RequestRefused, StartError
from waker.nginx.activity import Mark
from waker.shell.events import EventBus
from waker.shell.fleet import Fleet
from waker.shell.hosts import HostWatch
from waker.shell.record import ModelRecord, slot_for
from waker.shell.sleep import SleepShell
from waker.shell.waiting_room import WaitingRoom

log = structlog.get_logger("waker.shell.supervisor")

STOP_RETRY_SECONDS = 5.0


def policy_of(config: Config) -> Policy:
    s = config.scheduler
    return Policy(
        s.gpu_capacity,
        s.on_busy,
        s.queue_timeout,
        s.max_start_failures,
        s.start_backoff,
        s.max_wake_failures,
        tuple(HostBudget(h.name, h.gpu_capacity) for h in config.hosts),
    )


class Supervisor:
    def __init__(self, config: Config, fleet: Fleet, bus: EventBus, clock: Clock, router: Router | None = None) -> None:
        self.config = config
        self.fleet = fleet
        self.bus = bus
        self.clock = clock
        self.policy = policy_of(config)
        self.sleep = SleepShell(self, router)
        self.records: dict[str, ModelRecord] = {m.id: self._new_record(m) for m in config.models}
        if router is None and any(m.sleep.enabled for m in config.models):
            log.warning(
                "sleep_disabled",
                models=[m.id for m in config.models if m.sleep.enabled],
                reason="nothing routes nginx (--nginx none), so nobody could gate a sleeping model's "
                "requests: idle models are stopped instead",
            )
        self.waiting = WaitingRoom()
        self.hosts = HostWatch(self, fleet)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: Timer | None = None
        self._reconcile_pending = False
        self._changed = asyncio.Condition()

    def now(self) -> float:
        return self.clock.now()

    @property
    def docker_error(self) -> str | None:
        """Why no request can be served now: no host's engine answers."""
        return self.hosts.docker_error

    def driver_of(self, model_id: str) -> Driver:
        """The driver of the host(s) the model runs on or last ran on (never placed: its named host, or
        the first host)."""
        slot = self.records[model_id].slot
        return self.fleet.of(slot.hosts or ((slot.host,) if slot.host else ()))

    async def open(self) -> None:
        self.hosts.open()

    async def close(self) -> None:
        self.hosts.close()
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fleet.close()

    # ---- what others read -----------------------------------------------------------------------

    def state(self, model_id: str) -> State:
        return self.records[model_id].slot.state

    def current_slots(self) -> dict[str, Slot]:
        """The slots with what the activity marks say merged in, as `decide` needs them."""
        slots = {}
        for model_id, record in self.records.items():
            slot, activity = record.slot, record.activity
            slots[model_id] = replace(
                slot,
                in_flight=activity.in_flight,
                oldest_request_since=activity.oldest,
                last_active=max(slot.last_active, activity.last_end),
                mean_request_seconds=activity.mean_seconds,
            )
        return slots

    async def wait_until(self, model_id: str, states: tuple[State, ...], timeout: float) -> bool:
        """Waits until the model is in one of `states`; False if `timeout` passed first."""

        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.state(model_id) in states)

        try:
            await asyncio.wait_for(reached(), timeout)
            return True
        except TimeoutError:
            return False

    # ---- requests -------------------------------------------------------------------------------

    async def acquire(self, model: ModelConfig) -> None:
        """Returns when `model` is ready to serve; raises RequestRefused otherwise. nginx only asks
        when it could not reach the model, so a model believed ready is checked first."""
        if self.records[model.id].slot.suspended:
            self.update(model.id, suspended=False)
        if self.state(model.id) is State.READY:
            if await self.driver_of(model.id).healthy(model):
                return
            if self.state(model.id) is State.READY:
                self.bus.publish(ModelUnreachable(model.id))
                self.stop(model.id, StopReason.UNREACHABLE)
        waiter, answer = self.waiting.enter(model.id, self.now())
        self.bus.publish(RequestQueued(model.id, waiter.id, len(self.waiting)))
        self._reconcile_soon()  # a burst of requests makes one decision, not one each
        try:
            await answer
        except asyncio.CancelledError:
            if self.waiting.leave(waiter):  # the client went away while queued: start nothing for it
                self.bus.publish(RequestAbandoned(model.id, waiter.id))
                self.reconcile()
            raise

    def on_activity(self, mark: Mark) -> None:
        """Hot path (every model request, twice): bookkeeping only, and a decision only when one
        may be due: someone waits for room, or the model just went idle and no timer covers it."""
        record = self.records.get(mark.model)
        if record is None:
            return
        now = self.now()
        if mark.kind == "begin":
            record.activity.begin(mark.request, now)
            return
        record.activity.end(mark.request, now)
        due = now + record.slot.idle_timeout
        if self.waiting or (not record.activity.requests and (self._timer is None or self._timer.when() > due)):
            self._reconcile_soon()

    # ---- the plan -------------------------------------------------------------------------------

    def reconcile(self) -> None:
        self._reconcile_pending = False
        if not self.hosts.settled:
            return  # until each host's driver has told us what runs, deciding would be guessing
        plan = decide(self.current_slots(), self.waiting.waiting(), self.hosts.policy(self.policy), self.now())
        self._carry_out(plan)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if plan.wake_at is not None:
            self._timer = self.clock.call_at(plan.wake_at, self.reconcile)

    def _reconcile_soon(self) -> None:
        if not self._reconcile_pending:
            self._reconcile_pending = True
            asyncio.get_running_loop().call_soon(self.reconcile)

    def _carry_out(self, plan: Plan) -> None:
        for action in plan.actions:
            if isinstance(action, Start):
                self.transition(action.model, Event.START, starting_since=self.now(), hosts=action.hosts)
                self.spawn(self._run_start(self._model(action.model)))
            elif isinstance(action, Stop):
                self.stop(action.model, action.reason, action.for_model)
            elif isinstance(action, Sleep):
                self.transition(action.model, Event.SLEEP)
                self.spawn(self.sleep.fall_asleep(self._model(action.model), action.reason, action.for_model))
            elif isinstance(action, Wake):
                asleep_since = self.records[action.model].slot.since
                self.transition(action.model, Event.WAKE)
                self.spawn(self.sleep.wake(self._model(action.model), asleep_since))
            elif isinstance(action, Grant):
                self._answer(action.waiter, None)
            elif isinstance(action, Refuse):
                details = {"holders": [asdict(h) for h in action.holders]} if action.holders else {}
                self._answer(
                    action.waiter,
                    RequestRefused(action.status, action.code, action.message, action.retry_after, details),
                )

    def _answer(self, waiter_id: int, error: RequestRefused | None) -> None:
        waiter = self.waiting.answer(waiter_id, error)
        if error is not None:
            self.bus.publish(RequestRefusal(waiter.model, error.status, error.message))

    # ---- commands (the plan's, and manual control's) --------------------------------------------

    def update(self, model_id: str, **changes: Any) -> None:
        """Changes what the scheduler knows of a model without a transition (pinned, suspended, ...)."""
        record = self.records[model_id]
        record.slot = replace(record.slot, **changes)

    def stop(self, model_id: str, reason: StopReason, for_model: str | None = None) -> None:
        self.transition(model_id, Event.STOP)
        self.spawn(self._run_stop(self._model(model_id), reason, for_model))

    def put_to_sleep(self, model_id: str, reason: SleepReason) -> None:
        self._carry_out(Plan((Sleep(model_id, reason),)))

    def reset_failure(self, model_id: str) -> None:
        self.transition(model_id, Event.RESET, failures=0, retry_at=0.0, wake_failures=0)
        self.reconcile()

    def apply_config(self, new: Config, change: ConfigChange) -> None:
        """Takes in a config `plan_reload` accepted: new models join, changed ones keep their state
        with the new limits, removed ones are stopped (when running) and forgotten."""
        old, self.config, self.policy = self.config, new, policy_of(new)
        for model_id in change.added:
            self.records[model_id] = self._new_record(self._model(model_id), self.now())
        for model_id in change.changed:
            fresh = slot_for(self._model(model_id), self.sleep.router is not None)
            self.update(
                model_id,
                gpu_memory=fresh.gpu_memory,
                exclusive=fresh.exclusive,
                host=fresh.host,
                host_count=fresh.host_count,
                keep_warm=fresh.keep_warm,
                idle_timeout=fresh.idle_timeout,
                min_uptime=fresh.min_uptime,
                sleep_level=fresh.sleep_level,
                sleep_memory=fresh.sleep_memory,
                sleep_timeout=fresh.sleep_timeout,
                wake_failures=0,
            )
        for model_id in change.removed:
            for waiter in self.waiting.for_model(model_id):
                self._answer(waiter.id, RequestRefused(404, "model_not_found", f"model {model_id!r} was removed"))
            state = self.state(model_id)
            if state in (State.READY, State.SLEEPING):
                self.transition(model_id, Event.STOP)
                removed = old.model(model_id)
                assert removed is not None
                self.spawn(self._run_stop(removed, StopReason.REMOVED, None))
            elif state is not State.STOPPING:  # a stopping one is forgotten once its stop ends
                del self.records[model_id]
        self.bus.publish(ConfigReloaded(change.added, change.changed, change.removed))
        self.reconcile()

    def transition(self, model_id: str, event: Event, **changes: Any) -> None:
        record = self.records[model_id]
        before = record.slot
        state = next_state(before.state, event)
        record.slot = replace(before, state=state, since=self.now(), **changes)
        self.bus.publish(ModelStateChanged(model_id, state, before.state, event, changes.get("last_error") or None))
        self.sleep.on_transition(before.state, state)
        self.spawn(self._notify())

    def _new_record(self, model: ModelConfig, now: float = 0.0) -> ModelRecord:
        return ModelRecord.new(model, now, can_sleep=self.sleep.router is not None)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- side effects ---------------------------------------------------------------------------

    async def _run_start(self, model: ModelConfig, container_id: str | None = None) -> None:
        began = self.now()
        record = self.records[model.id]
        record.died.clear()
        asleep = False
        try:
            if container_id is None:
                container_id = await self.driver_of(model.id).up(model, record.died)
            else:  # adopting a container that is already running
                await self.driver_of(model.id).adopt(model, container_id, began + model.start_timeout, record.died)
                asleep = await self.sleep.found_asleep(model)
        except StartError as exc:
            self.fail(model.id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the model stuck in "starting"
            log.exception("start_crashed", model=model.id)
            self.fail(
                model.id,
                StartError(
                    500,
                    "internal_error",
                    f"model {model.id!r}: the waker failed while starting it ({exc!r}); its log has the details",
                ),
            )
        else:
            now = self.now()
            record.container = container_id
            # `failures` stays: a run only counts as good once it ends by our stop, not by a crash.
            self.transition(
                model.id,
                Event.READY,
                ready_since=now,
                last_active=now,
                retry_at=0.0,
                last_error="",
                expected_start_seconds=now - began,
            )
            self.bus.publish(ModelReady(model.id, round(now - began, 3)))
            if asleep:
                self.sleep.adopt_asleep(model.id)
        self.reconcile()

    def fail(self, model_id: str, exc: StartError, **changes: Any) -> None:
        """A failed run (its start failed, or it crashed while serving): counts towards the back-off
        and answers everyone waiting for the model with the reason, unless it crashed while waking:
        then its waiters get the cold start a failed wake gives them (or the back-off's refusal)."""
        slot = self.records[model_id].slot
        failures = slot.failures + 1
        backoff = failures >= self.policy.max_start_failures
        retry_at = self.now() + self.policy.start_backoff if backoff else 0.0
        self.transition(model_id, Event.FAIL, failures=failures, retry_at=retry_at, last_error=exc.message, **changes)
        if backoff:
            self.bus.publish(ModelBackoff(model_id, failures, self.policy.start_backoff))
        for waiter in self.waiting.for_model(model_id) if slot.state is not State.WAKING else ():
            self._answer(waiter.id, RequestRefused(exc.status, exc.code, exc.message))

    async def _run_stop(self, model: ModelConfig, reason: StopReason, for_model: str | None) -> None:
        server_requests = None  # an idle stop says what the engine said (None: nothing)
        if reason is StopReason.IDLE:
            busy = server_requests = await self.driver_of(model.id).busy(model)
            # The engine may be working on requests nginx never told us about (a waker restart), and
            # nginx may have passed it a new one while we asked: either calls the stop off.
            in_flight = self.records[model.id].activity.in_flight
            if busy or in_flight:
                self.transition(model.id, Event.RESUME, last_active=self.now())
                self.bus.publish(IdleStopPostponed(model.id, busy or 0, in_flight))
                self.reconcile()
                return
        try:
            await self.driver_of(model.id).down(model, self.records[model.id].container)
        except DriverError as exc:
            log.error("stop_failed", model=model.id, error=str(exc), retry_in=STOP_RETRY_SECONDS)
            await self.clock.sleep(STOP_RETRY_SECONDS)
            self.spawn(self._run_stop(model, reason, for_model))
            return
        self.records[model.id].container = None
        self.transition(model.id, Event.STOPPED, failures=0)  # a run we ended is a good run
        self.bus.publish(ModelStopped(model.id, reason, for_model, server_requests))
        if self.config.model(model.id) is None:  # removed by a reload
            del self.records[model.id]
        self.reconcile()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine, name=getattr(coroutine, "__qualname__", None))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_name(), error=repr(task.exception()), exc_info=task.exception())

    def _model(self, model_id: str) -> ModelConfig:
        model = self.config.model(model_id)
        assert model is not None, f"model {model_id!r} is not in the config"
        return model

    # ---- what the hosts' engines report (host_watch) ------------------------------------------------

    def adopt(self, model_id: str, container_id: str, hosts: tuple[str, ...]) -> None:
        self.bus.publish(ContainerAdopted(model_id, container_id[:12], hosts if self.hosts.several else None))
        self.transition(model_id, Event.START, starting_since=self.now(), hosts=hosts)
        self.spawn(self._run_start(self._model(model_id), container_id))

    def tear_down(self, model_id: str) -> None:
        """Stops what is left of a failed model spread over two hosts, without a state change."""
        self.spawn(self._tear_down(self._model(model_id), self.driver_of(model_id)))

    async def _tear_down(self, model: ModelConfig, driver: Driver) -> None:
        try:
            await driver.down(model, None)
        except DriverError as exc:
            log.error("tear_down_failed", model=model.id, error=str(exc))

    def address_of(self, model: ModelConfig) -> Address:
        """Where the model's server is reached: on the host it runs on (or last ran on)."""
        host = next((h for h in self.config.hosts if h.name == self.host_of(model.id)), None)
        if host is None or self.config.waker.network:
            return model.address
        return Address(host.address, model.host_port)

    def host_of(self, model_id: str) -> str:
        """The host the model's requests go to (its head's): where it runs, else where it last ran."""
        return hosts_of(self.records[model_id].slot, self.policy)[0] if model_id in self.records else ""
