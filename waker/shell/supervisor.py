"""The imperative shell around the pure core, and the one writer of every model's state: it holds the
state, feeds it to `scheduler.decide` and the `incidents` rules, and carries out what they return
(engine starts, stops, sleeps and wakes through the driver; answers to waiting requests).

Inputs: wake requests from nginx (`acquire`), activity marks from nginx (`on_activity`), what each
host's engine reports (`container_event`, `host_listed`, `host_lost`, through `shell.hosts`), manual
control's commands, timers that `decide` asks for, and the memory guard (`shell.memory_guard`), the
one sampler: it reads this machine's memory and has a model stopped below the floor. The world is
reached only through what is passed in: a `Fleet` (a `Driver` per host), a `Clock`, an `EventBus` and
a reader of this machine's memory; sleep mode also needs a `Router`, nginx's gate: without one, no
model sleeps.

Every change of a model's state goes through `_write`, and every step of a side effect re-checks the
model's state after each await: a container death, a manual stop or a reload may have changed it
meanwhile, and then the step has nothing left to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import asdict, dataclass, replace
from types import MappingProxyType
from typing import Any

import structlog

from waker.config.fields import Address
from waker.config.hosts import memory_host, probe_images
from waker.config.ray import RayNode
from waker.config.schema import Config, ModelConfig
from waker.core import incidents
from waker.core.driver import Clock, ContainerChange, ContainerEvent, Driver, Memory, Router, Timer
from waker.core.events import (
    ConfigReloaded,
    ContainerAdopted,
    HostBack,
    HostLost,
    IdleStopPostponed,
    MemoryGuardTripped,
    ModelAsleep,
    ModelAwake,
    ModelBackoff,
    ModelExited,
    ModelOom,
    ModelPinned,
    ModelReady,
    ModelStateChanged,
    ModelStopped,
    ModelUnpinned,
    ModelUnreachable,
    PageCacheDropped,
    RequestAbandoned,
    RequestQueued,
    RequestRefusal,
    SleepCalledOff,
    SleepFailed,
    WakeFailed,
)
from waker.core.incidents import GATED, Failure, IdleCheck
from waker.core.lifecycle import Event, SleepReason, State, StopReason
from waker.core.memory import STOPPABLE, ContainerMemory, HostMemory, Trip, exceeds_share
from waker.core.plan import Grant, HostBudget, Plan, Policy, Refuse, Sleep, Slot, Start, Stop, Wake
from waker.core.reload import ConfigChange
from waker.core.scheduler import decide, hosts_of
from waker.errors import DriverError, NginxError, RequestRefused, SleepModeError, StartError
from waker.nginx.activity import Mark, MarkKind
from waker.shell.events import EventBus
from waker.shell.externals import Externals
from waker.shell.fleet import Fleet
from waker.shell.gate import Gate
from waker.shell.hosts import Hosts, HostStatus
from waker.shell.memory_guard import Footprints, MemoryGuard
from waker.shell.record import ModelRecord, with_limits
from waker.shell.waiting_room import WaitingRoom

log = structlog.get_logger("waker.shell.supervisor")

STOP_RETRY_SECONDS = 5.0
RECHECK_SECONDS = 5.0  # before asking an engine that did not answer its busy check again
STATS_TIMEOUT = 2.0  # the longest wait for a container's memory from its engine
NEEDS_A_START = (State.STOPPED, State.FAILED, State.SLEEPING)  # a request for it starts or wakes it


@dataclass(frozen=True, slots=True)
class Looked:
    """An idle stop's or sleep's last look at the engine's work and nginx's."""

    verdict: IdleCheck
    server_requests: int | None  # what the engine reported; None: it did not say, or did not answer
    in_flight: int  # what nginx passed it


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
    def __init__(
        self,
        config: Config,
        fleet: Fleet,
        bus: EventBus,
        clock: Clock,
        router: Router | None = None,
        memory: Memory | None = None,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.bus = bus
        self.clock = clock
        self.policy = policy_of(config)
        self.gate = Gate(router, lambda: self.config, self.gated) if router is not None else None
        self._records = {m.id: self._new_record(m) for m in config.models}
        self.records: Mapping[str, ModelRecord] = MappingProxyType(self._records)  # read-only outside
        if router is None and any(m.sleep.enabled for m in config.models):
            log.warning(
                "sleep_disabled",
                models=[m.id for m in config.models if m.sleep.enabled],
                reason="nothing routes nginx (--nginx none), so nobody could gate a sleeping model's "
                "requests: idle models are stopped instead",
            )
        self.waiting = WaitingRoom()
        self.hosts = Hosts(fleet, clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: Timer | None = None
        self._reconcile_pending = False
        self._changed = asyncio.Condition()
        self._guard_kills: set[str] = set()  # models the memory guard stopped, until their container exits
        self.here = host = memory_host(config.placement_hosts)  # the host whose engine is this machine's
        self.footprints: Footprints | None = None
        self.guards: dict[str, MemoryGuard] = {}  # host -> its guard
        if memory is not None:
            # `memory` reads this machine's memory: it guards the host whose engine runs here; the
            # others are read through their engines.
            self.footprints = footprints = Footprints(memory)
            self.guards = {h.name: self._guard(h.name, memory, footprints) for h in config.placement_hosts}
        # Other workloads run beside the models on this machine, whose engine is the host's.
        self.externals = (
            Externals(fleet.drivers[host], lambda: self.config.externals, self.spawn, memory) if host else None
        )
        self._externals_adopted = False

    async def open(self) -> None:
        self.hosts.open(self)
        for guard in self.guards.values():
            guard.open(self)

    async def close(self) -> None:
        self.hosts.close()
        await asyncio.gather(*(guard.close() for guard in self.guards.values()))
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fleet.close()

    # ---- what others read -----------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    @property
    def docker_error(self) -> str | None:
        """Why no request can be served now: no host's engine answers."""
        return self.hosts.docker_error

    def state(self, model_id: str) -> State:
        return self._records[model_id].slot.state

    def current_slots(self) -> dict[str, Slot]:
        """The slots with what the activity marks say merged in, and each model's footprint as the
        larger of what it declares and what the memory guard learned, as `decide` needs them."""
        learned = self.footprints.learned if self.footprints is not None else {}
        slots = {}
        for model_id, record in self._records.items():
            slot, activity = record.slot, record.activity
            slots[model_id] = replace(
                slot,
                memory=max(slot.memory, learned.get(model_id, 0)),
                in_flight=activity.in_flight,
                oldest_request_since=activity.oldest,
                last_active=max(slot.last_active, activity.last_end),
                mean_request_seconds=activity.mean_seconds,
            )
        return slots

    @property
    def releasing(self) -> frozenset[str]:
        """The models whose memory is on its way back after the memory guard stopped them."""
        return frozenset(self._guard_kills)

    def footprint(self, model: ModelConfig) -> dict[str, int | bool | None]:
        """What the model takes of the host's memory: as declared (its `memory`), as learned at its last
        start, and whether the learned one exceeds what it declares (or, declaring none, what its share
        of the GPU would be of the host's memory)."""
        learned = self.footprints.learned.get(model.id) if self.footprints is not None else None
        guard = self.guards.get(self.host_of(model.id))
        latest = guard.latest if guard is not None else None
        return {
            "declared_bytes": model.memory or None,
            "learned_bytes": learned,
            "exceeds_declared": exceeds_share(
                learned, model.memory, model.gpu_memory, latest.total if latest else None
            ),
        }

    def gated(self) -> frozenset[str]:
        """The models whose requests must go to the waker: those in sleep mode."""
        return frozenset(m for m, r in self._records.items() if r.slot.state in GATED)

    def driver_of(self, model_id: str) -> Driver:
        """The driver of the host(s) the model runs on or last ran on (never placed: its named host, or
        the first host)."""
        slot = self._records[model_id].slot
        return self.fleet.of(slot.hosts or ((slot.host,) if slot.host else ()))

    def host_of(self, model_id: str) -> str:
        """The host the model's requests go to (its head's): where it runs, else where it last ran."""
        return hosts_of(self._records[model_id].slot, self.policy)[0] if model_id in self._records else ""

    def address_of(self, model: ModelConfig) -> Address:
        """Where the model's server is reached: on the host it runs on (or last ran on)."""
        host = next((h for h in self.config.hosts if h.name == self.host_of(model.id)), None)
        if host is None or self.config.waker.network:
            return model.address
        return Address(host.address, model.host_port)

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
        slot = self._records[model.id].slot
        if slot.suspended:
            self._write(model.id, replace(slot, suspended=False))
        if slot.state is State.READY:
            if await self.driver_of(model.id).healthy(model):
                return
            if self.state(model.id) is State.READY:
                self.bus.publish(ModelUnreachable(model.id))
                self.stop(model.id, StopReason.UNREACHABLE)
        if self.externals is not None and self._on_this_machine(model.id) and slot.state in NEEDS_A_START:
            await self.externals.check(model.id)  # raises RequestRefused while a `block` workload runs
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
        record = self._records.get(mark.model)
        if record is None:
            return
        now = self.now()
        if mark.kind is MarkKind.BEGIN:
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
        plan = decide(self.current_slots(), self.waiting.waiting(), self.policy_now(), self.now())
        self._carry_out(plan)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if plan.wake_at is not None:
            self._timer = self.clock.call_at(plan.wake_at, self.reconcile)

    def policy_now(self) -> Policy:
        """The policy with each host's engine as it is now, and this machine's memory read now."""
        policy = self.hosts.policy(self.policy)
        views = {name: guard.view(self._releasing_on(name)) for name, guard in self.guards.items()}
        return replace(policy, hosts=tuple(replace(b, memory=views.get(b.name)) for b in policy.budgets))

    def _releasing_on(self, host: str) -> frozenset[str]:
        return frozenset(m for m in self._guard_kills if host in hosts_of(self._records[m].slot, self.policy))

    def host_status(self, slots: dict[str, Slot]) -> list[HostStatus]:
        """Each host as the admin API, the metrics and the dashboard show it, memory included."""
        errors = {name: guard.error for name, guard in self.guards.items()}
        return self.hosts.status(slots, self.policy_now(), errors)

    def _guard(self, host: str, memory: Memory, footprints: Footprints) -> MemoryGuard:
        def floor() -> int:  # the config in force: a reload changes it
            entry = next((h for h in self.config.placement_hosts if h.name == host), None)
            own = entry.memory_floor if entry is not None else None
            return self.config.scheduler.memory_floor if own is None else own

        if host == self.here:
            return MemoryGuard.of_this_machine(host, memory, self.clock, floor, footprints)
        driver = self.fleet.drivers[host]

        async def read() -> HostMemory:
            entry = next(h for h in self.config.placement_hosts if h.name == host)
            return await driver.host_memory(probe_images(entry, tuple(m.image for m in self.config.models)))

        return MemoryGuard(host, read, self.clock, floor, footprints, end=driver.end_memory_readings)

    async def memory_in_use(self) -> dict[str, ContainerMemory | None]:
        """Each model's container's memory, read from its engine for all at once (a Docker call for
        each model with a container)."""
        ids = list(self._records)
        used = await asyncio.gather(*(self.container_memory(m) for m in ids))
        return dict(zip(ids, used, strict=True))

    async def container_memory(self, model_id: str) -> ContainerMemory | None:
        """The model's container's memory now, as its engine says; None if it has none or does not say."""
        record = self._records.get(model_id)
        if record is None or record.container is None:
            return None
        try:
            return await asyncio.wait_for(self.driver_of(model_id).memory_use(record.container), STATS_TIMEOUT)
        except (DriverError, TimeoutError):
            return None

    def _on_this_machine(self, model_id: str) -> bool:
        """Whether the model runs (or would run) on the host whose engine is this machine's."""
        here, slot = self.here, self._records[model_id].slot
        return here is not None and (not slot.hosts and slot.host in ("", here) or here in slot.hosts)

    def has_waiters(self) -> bool:
        return bool(self.waiting)

    def _reconcile_soon(self) -> None:
        if not self._reconcile_pending:
            self._reconcile_pending = True
            asyncio.get_running_loop().call_soon(self.reconcile)

    def _carry_out(self, plan: Plan) -> None:
        for action in plan.actions:
            if isinstance(action, Start):
                self._start(action.model, action.hosts)
            elif isinstance(action, Stop):
                self.stop(action.model, action.reason, action.for_model)
            elif isinstance(action, Sleep):
                self._move(action.model, Event.SLEEP)
                self.spawn(self._run_sleep(self._records[action.model].model, action.reason, action.for_model))
            elif isinstance(action, Wake):
                asleep_since = self._records[action.model].slot.since
                self._move(action.model, Event.WAKE)
                self._poke_guards()
                self.spawn(self._run_wake(self._records[action.model].model, asleep_since))
            elif isinstance(action, Grant):
                self._answer(action.waiter, None)
            elif isinstance(action, Refuse):
                details = {"holders": [asdict(h) for h in action.holders]} if action.holders else {}
                refused = RequestRefused(action.status, action.code, action.message, action.retry_after, details)
                self._answer(action.waiter, refused)

    def _answer(self, waiter_id: int, error: RequestRefused | None) -> None:
        waiter = self.waiting.answer(waiter_id, error)
        if error is not None:
            self.bus.publish(RequestRefusal(waiter.model, error.status, error.message))

    # ---- the one writer -------------------------------------------------------------------------

    def _write(self, model_id: str, slot: Slot, trigger: Event | None = None) -> None:
        """Replaces the model's slot; `trigger` names the lifecycle event when its state changed."""
        record = self._records[model_id]
        before, record.slot = record.slot, slot
        if trigger is None:
            return
        if self.externals is not None and slot.state in (State.STOPPED, State.FAILED):
            self.externals.model_down(model_id)
        error = slot.last_error or None if slot.state is State.FAILED else None
        self.bus.publish(ModelStateChanged(model_id, slot.state, before.state, trigger, error))
        if self.gate is not None and (before.state in GATED) != (slot.state in GATED):
            self.spawn(self.gate.route_logged())  # leaving sleep mode (woken, called off, died) opens it
        self.spawn(self._notify())

    def _move(self, model_id: str, event: Event) -> None:
        """The transition `event`, nothing else changed."""
        self._write(model_id, self._records[model_id].slot.moved(event, self.now()), event)

    def _start(self, model_id: str, hosts: tuple[str, ...], container_id: str | None = None) -> None:
        """Starts the model on `hosts` (or adopts its running container)."""
        now = self.now()
        slot = self._records[model_id].slot.moved(Event.START, now)
        self._write(model_id, replace(slot, starting_since=now, hosts=hosts), Event.START)
        self._poke_guards()
        self.spawn(self._run_start(self._records[model_id].model, container_id))

    def _poke_guards(self) -> None:
        for guard in self.guards.values():
            guard.poke()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- commands (the plan's, and manual control's) --------------------------------------------

    def stop(self, model_id: str, reason: StopReason, for_model: str | None = None, suspend: bool = False) -> None:
        """Stops the model's engine; `suspend` keeps a keep_warm model down until asked for."""
        slot = self._records[model_id].slot
        self._write(model_id, replace(slot.moved(Event.STOP, self.now()), suspended=suspend), Event.STOP)
        self.spawn(self._run_stop(self._records[model_id].model, reason, for_model))

    def memory_trip(self, trip: Trip, memory: HostMemory, floor: int, host: str) -> None:
        """The memory guard's stop: the model fails (its waiters get the figures, the back-off counts
        it as a failed run) and its container is killed at once, not stopped gracefully: the box
        would hang before a graceful stop ended."""
        record = self._records.get(trip.model)
        if record is None or record.slot.state not in STOPPABLE:
            return  # gone or going since the guard's reading: its next sample decides again
        state = record.slot.state
        failure = incidents.failed_run(record.slot, trip.message, self.policy, self.now())
        self._fail(trip.model, StartError(503, "memory_guard", trip.message), replace(failure, answer_waiters=True))
        record.died.set()  # a start in progress stops waiting for its health
        self.bus.publish(MemoryGuardTripped(trip.model, state, memory.available, memory.total, floor, host))
        log.warning(
            "memory_guard_stop", model=trip.model, host=host, state=state, available=memory.available, floor=floor
        )
        self._guard_kills.add(trip.model)
        self.spawn(self._guard_kill(record.model, record.container))
        record.container = None

    async def _guard_kill(self, model: ModelConfig, container_id: str | None) -> None:
        try:
            while True:
                try:
                    await self.driver_of(model.id).down(model, container_id, grace=0)
                    return
                except DriverError as exc:
                    log.error("memory_guard_kill_failed", model=model.id, error=str(exc), retry_in=1)
                    await self.clock.sleep(1)
        finally:
            self._guard_kills.discard(model.id)
            self.reconcile()

    def put_to_sleep(self, model_id: str, reason: SleepReason) -> None:
        self._carry_out(Plan((Sleep(model_id, reason),)))

    def pin(self, model_id: str, pinned: bool) -> None:
        self._write(model_id, replace(self._records[model_id].slot, pinned=pinned))
        self.bus.publish(ModelPinned(model_id) if pinned else ModelUnpinned(model_id))
        self.reconcile()

    def forget_wake_failures(self, model_id: str) -> None:
        """An operator's stop clears the failed wakes that keep a model from sleeping."""
        self._write(model_id, replace(self._records[model_id].slot, wake_failures=0))

    def reset_failure(self, model_id: str) -> None:
        self._clear_failures(model_id)
        self.reconcile()

    def _clear_failures(self, model_id: str) -> None:
        """The model's failures forgotten: a failed one is stopped, and may start at the next request."""
        slot = self._records[model_id].slot
        cleared = replace(slot, failures=0, retry_at=0.0, wake_failures=0)
        if slot.state is State.FAILED:
            self._write(model_id, cleared.moved(Event.RESET, self.now()), Event.RESET)
        else:
            self._write(model_id, cleared)

    def apply_config(self, new: Config, change: ConfigChange) -> None:
        """Takes in a config `plan_reload` accepted: new models join, changed ones keep their state
        with the new limits (those that run as another container lose their back-off), removed ones
        are stopped (when running) and forgotten."""
        self.config, self.policy = new, policy_of(new)
        for model_id in change.added:
            self._records[model_id] = self._new_record(self._configured(model_id), self.now())
        for model_id in change.changed:
            record = self._records[model_id]
            record.model = self._configured(model_id)
            limits = replace(with_limits(record.slot, record.model, self.gate is not None), wake_failures=0)
            self._write(model_id, limits)
        for model_id in change.renewed:  # another container: the old one's back-off says nothing of it
            self._clear_failures(model_id)
        for model_id in change.removed:
            for waiter in self.waiting.for_model(model_id):
                self._answer(waiter.id, RequestRefused(404, "model_not_found", f"model {model_id!r} was removed"))
            state = self.state(model_id)
            if state in (State.READY, State.SLEEPING):
                self._move(model_id, Event.STOP)
                self.spawn(self._run_stop(self._records[model_id].model, StopReason.REMOVED, None))
            elif state is not State.STOPPING:  # a stopping one is forgotten once its stop ends
                del self._records[model_id]
        self.bus.publish(ConfigReloaded(change.added, change.changed, change.removed))
        self.reconcile()

    # ---- starts and stops -----------------------------------------------------------------------

    async def _run_start(self, model: ModelConfig, container_id: str | None = None) -> None:
        began = self.now()
        record = self._records[model.id]
        record.died.clear()
        asleep = False
        try:
            if container_id is None:
                if self.externals is not None and self._on_this_machine(model.id):
                    # Asked again: a keep_warm restart has no request that the door refused, and a
                    # request may have waited while a `block` workload came up.
                    try:
                        await self.externals.check(model.id)
                    except RequestRefused as refused:
                        self._call_off(model.id, refused)
                        return
                    await self.externals.make_room(model.id)
                await self._free_page_cache(model)
                container_id = await self.driver_of(model.id).up(model, record.died)
            else:  # adopting a container that is already running
                await self.driver_of(model.id).adopt(model, container_id, began + model.start_timeout, record.died)
                asleep = await self._found_asleep(model)
        except StartError as exc:
            if self._still(model.id, State.STARTING):  # else the memory guard ended the start first
                self._fail(model.id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the model stuck in "starting"
            log.exception("start_crashed", model=model.id)
            message = f"model {model.id!r}: the waker failed while starting it ({exc!r}); its log has the details"
            self._fail(model.id, StartError(500, "internal_error", message))
        else:
            if not self._still(model.id, State.STARTING):
                return
            now = self.now()
            record.container = container_id
            # `failures` stays: a run only counts as good once it ends by our stop, not by a crash.
            ready = replace(
                record.slot.moved(Event.READY, now),
                ready_since=now,
                last_active=now,
                retry_at=0.0,
                last_error="",
                expected_start_seconds=now - began,
            )
            self._write(model.id, ready, Event.READY)
            self.bus.publish(ModelReady(model.id, round(now - began, 3)))
            if asleep:  # a ready model found asleep: marked sleeping (its gate closes)
                self._move(model.id, Event.SLEEP)
                self._move(model.id, Event.ASLEEP)
        self.reconcile()

    async def _free_page_cache(self, model: ModelConfig) -> None:
        """With `drop_page_cache`, before a start on this machine: the model needs free what it takes
        (declared or learned) and, for vLLM's start check, its share of the GPU's (unified) memory."""
        guard, slot = self.guards.get(self.here or ""), self.current_slots()[model.id]
        if guard is None or not self.config.scheduler.drop_page_cache or not self._on_this_machine(model.id):
            return
        total = guard.latest.total if guard.latest is not None else 0
        need = max(slot.memory, round(slot.gpu_memory * total))
        dropped = await guard.free_for(need)
        if dropped is not None:
            self.bus.publish(PageCacheDropped(model.id, need, *dropped))

    def _call_off(self, model_id: str, refused: RequestRefused) -> None:
        """A start held off by a `block` workload: the model is down again, its waiters get the
        refusal, and a keep_warm model is tried again after its Retry-After."""
        if not self._still(model_id, State.STARTING):
            return  # the memory guard ended the start while the workloads were listed
        now = self.now()
        slot = self._records[model_id].slot.moved(Event.CALL_OFF, now)
        self._write(model_id, replace(slot, retry_at=now + (refused.retry_after or 0)), Event.CALL_OFF)
        log.info("start_called_off", model=model_id, reason=refused.code, retry_in=refused.retry_after)
        for waiter in self.waiting.for_model(model_id):
            self._answer(waiter.id, refused)
        self.reconcile()

    def _fail(self, model_id: str, exc: StartError, failure: Failure | None = None) -> None:
        """A failed run (its start failed, or it crashed while serving): counts towards the back-off and
        answers everyone waiting for the model with the reason (after a crash while waking, the waiters
        get the cold start a failed wake gives them, or the back-off's refusal)."""
        if failure is None:
            failure = incidents.failed_run(self._records[model_id].slot, exc.message, self.policy, self.now())
        self._write(model_id, failure.slot, Event.FAIL)
        if failure.backoff:
            self.bus.publish(ModelBackoff(model_id, failure.slot.failures, self.policy.start_backoff))
        for waiter in self.waiting.for_model(model_id) if failure.answer_waiters else ():
            self._answer(waiter.id, RequestRefused(exc.status, exc.code, exc.message))

    async def _run_stop(self, model: ModelConfig, reason: StopReason, for_model: str | None) -> None:
        server_requests = None  # an idle stop says what the engine said (None: nothing)
        if reason is StopReason.IDLE:
            # The engine may be working on requests nginx never told us about (a waker restart), and
            # nginx may have passed it a new one while we asked: either calls the stop off.
            looked = await self._look_for_work(model, State.STOPPING)
            server_requests = looked.server_requests
            if looked.verdict is IdleCheck.BUSY:
                slot = self._records[model.id].slot.moved(Event.RESUME, self.now())
                self._write(model.id, replace(slot, last_active=self.now()), Event.RESUME)
                self.bus.publish(IdleStopPostponed(model.id, server_requests or 0, looked.in_flight))
                self.reconcile()
                return
        try:
            await self.driver_of(model.id).down(model, self._records[model.id].container)
        except DriverError as exc:
            log.error("stop_failed", model=model.id, error=str(exc), retry_in=STOP_RETRY_SECONDS)
            await self.clock.sleep(STOP_RETRY_SECONDS)
            self.spawn(self._run_stop(model, reason, for_model))
            return
        self._records[model.id].container = None
        slot = self._records[model.id].slot.moved(Event.STOPPED, self.now())
        self._write(model.id, replace(slot, failures=0), Event.STOPPED)  # a run we ended is a good run
        self.bus.publish(ModelStopped(model.id, reason, for_model, server_requests))
        if self.config.model(model.id) is None:  # removed by a reload
            del self._records[model.id]
        self.reconcile()

    async def _look_for_work(self, model: ModelConfig, state: State) -> Looked:
        """Asks the engine what it is working on and reads what nginx passed it, asking again after a
        pause while the engine does not answer (`incidents.idle_check`). A model that leaves `state`
        meanwhile is looked at no more."""
        unanswered = 0
        while True:
            try:
                server_requests, answered = await self.driver_of(model.id).busy(model), True
            except DriverError as exc:
                server_requests, answered = None, False
                log.warning("busy_check_unanswered", model=model.id, error=str(exc), unanswered=unanswered + 1)
            in_flight = self._records[model.id].activity.in_flight if model.id in self._records else 0
            verdict = incidents.idle_check(server_requests, answered, in_flight, unanswered)
            if verdict is not IdleCheck.CHECK_AGAIN or not self._still(model.id, state):
                return Looked(verdict, server_requests, in_flight)
            unanswered += 1
            await self.clock.sleep(RECHECK_SECONDS)

    # ---- sleep mode -----------------------------------------------------------------------------

    def _still(self, model_id: str, state: State) -> bool:
        record = self._records.get(model_id)
        return record is not None and record.slot.state is state

    async def _run_sleep(self, model: ModelConfig, reason: SleepReason, for_model: str | None) -> None:
        """Carries out a `Sleep` (the model is falling asleep): gate closed, no work left, then sleep."""
        assert self.gate is not None, "a model sleeps only where nginx is routed"
        began = self.now()
        try:
            await self.gate.route()
        except NginxError as exc:
            if self._still(model.id, State.FALLING_ASLEEP):
                self._call_sleep_off(model.id, f"nginx could not close its gate: {exc}")
            return
        if not self._still(model.id, State.FALLING_ASLEEP):
            return
        # Requests nginx passed on before the gate closed (or the engine's own count, after a waker
        # restart) call the sleep off: vLLM would abort them.
        looked = await self._look_for_work(model, State.FALLING_ASLEEP)
        if not self._still(model.id, State.FALLING_ASLEEP):
            return
        if looked.verdict is IdleCheck.BUSY:
            self._call_sleep_off(model.id, "requests in flight", looked.server_requests or 0, looked.in_flight)
            return
        try:
            await self.driver_of(model.id).sleep(model)
        except SleepModeError as exc:
            if self._still(model.id, State.FALLING_ASLEEP):
                self.bus.publish(SleepFailed(model.id, exc.step, exc.timed_out, exc.message))
                self.stop(model.id, StopReason.SLEEP_FAILED)
            return
        if not self._still(model.id, State.FALLING_ASLEEP):
            return
        self._move(model.id, Event.ASLEEP)
        self.bus.publish(ModelAsleep(model.id, reason, for_model, round(self.now() - began, 3)))
        self.reconcile()

    def _call_sleep_off(
        self, model_id: str, why: str, server_requests: int | None = None, in_flight: int | None = None
    ) -> None:
        slot = self._records[model_id].slot.moved(Event.RESUME, self.now())
        self._write(model_id, replace(slot, last_active=self.now()), Event.RESUME)
        self.bus.publish(SleepCalledOff(model_id, why, server_requests, in_flight))
        self.reconcile()

    async def _run_wake(self, model: ModelConfig, asleep_since: float) -> None:
        """Carries out a `Wake` (the model is waking). A failed wake stops the model: its waiters stay
        queued, and the scheduler starts it cold for them once it has exited."""
        began = self.now()
        if self.externals is not None and self._on_this_machine(model.id):
            await self.externals.make_room(model.id)
        try:
            await self.driver_of(model.id).wake(model)
        except SleepModeError as exc:
            if self._still(model.id, State.WAKING):
                stopping = incidents.wake_failed(self._records[model.id].slot, self.now())
                self.bus.publish(WakeFailed(model.id, exc.step, exc.timed_out, exc.message, stopping.wake_failures))
                self._write(model.id, stopping, Event.STOP)
                self.spawn(self._run_stop(model, StopReason.WAKE_FAILED, None))
            return
        if not self._still(model.id, State.WAKING):
            return
        now = self.now()
        awake = replace(self._records[model.id].slot.moved(Event.READY, now), ready_since=now, last_active=now)
        self._write(model.id, replace(awake, wake_failures=0), Event.READY)
        self.bus.publish(ModelAwake(model.id, round(now - began, 3), round(began - asleep_since, 3)))
        self.reconcile()  # its waiters are granted: nginx's @retry_ location needs no new route

    async def _found_asleep(self, model: ModelConfig) -> bool:
        """Whether a container found running (a waker restart) is asleep: then it stays so, gated."""
        if self.gate is None or not model.sleep.enabled:
            return False
        try:
            return await self.driver_of(model.id).is_sleeping(model)
        except SleepModeError as exc:
            log.warning("is_sleeping_failed", model=model.id, error=exc.message)
            return False

    # ---- what the hosts' engines report (through shell.hosts) -----------------------------------

    def container_event(self, host: str, event: ContainerEvent) -> None:
        record = self._records.get(event.model_id)
        if record is None:
            return
        slot = record.slot
        if event.change is ContainerChange.OOM:
            self.bus.publish(ModelOom(event.model_id))
        elif event.change is ContainerChange.STARTED:
            if incidents.adopts(slot, ray_worker=event.ray_node is RayNode.WORKER):
                hosts = incidents.adopted_hosts(slot, host, self.hosts.names)
                self._adopt(event.model_id, event.container_id, hosts)
        elif incidents.dying_start(slot, host, self.policy):
            record.died.set()
        elif crash := incidents.died(slot, event.exit_code, host, self.hosts.several, self.policy, self.now()):
            self.bus.publish(ModelExited(event.model_id, event.exit_code))
            record.container = None
            message = crash.failure.slot.last_error
            self._fail(event.model_id, StartError(503, "model_exited", message), crash.failure)
            if crash.tear_down:  # the other half of the pair cannot serve alone
                self.spawn(self._tear_down(self._records[event.model_id].model, self.driver_of(event.model_id)))
            self.spawn(self._add_log_tail(event.model_id, event.container_id, message))
            self.reconcile()

    def host_listed(self, host: str, running: dict[str, str], back: bool) -> None:
        slots = {model_id: record.slot for model_id, record in self._records.items()}
        found = incidents.resync(slots, running, host, self.hosts.names, self.policy, self.now())
        for model_id, (container_id, hosts) in found.adopt.items():
            self._adopt(model_id, container_id, hosts)
        for model_id, stopped in found.gone.items():
            self._records[model_id].container = None
            self._write(model_id, stopped, Event.EXITED)
        for model_id, container_id in found.strays.items():
            self.spawn(self._stop_stray(host, model_id, container_id))
        if self.externals is not None and not self._externals_adopted and host == self.here:
            self._externals_adopted = True  # what an earlier run paused, once this host's models are known
            self.spawn(self.externals.adopt(set(running)))
        if back:
            self.bus.publish(HostBack(host))
        self.reconcile()

    def host_lost(self, host: str, reason: str, first: bool) -> None:
        if not self.hosts.several:
            return  # requests are refused at the door (docker_error) until the one engine is back
        slots = {model_id: record.slot for model_id, record in self._records.items()}
        gone = incidents.lost(slots, host, self.policy, self.now())
        for model_id, stopped in gone.items():
            self._records[model_id].container = None
            self._write(model_id, stopped, Event.EXITED)
        if first:
            self.bus.publish(HostLost(host, reason, tuple(gone)))
        self.reconcile()

    def _adopt(self, model_id: str, container_id: str, hosts: tuple[str, ...]) -> None:
        self.bus.publish(ContainerAdopted(model_id, container_id[:12], hosts if self.hosts.several else None))
        self._start(model_id, hosts, container_id)

    async def _tear_down(self, model: ModelConfig, driver: Driver) -> None:
        """Stops what is left of a failed model spread over two hosts, without a state change."""
        try:
            await driver.down(model, None)
        except DriverError as exc:
            log.error("tear_down_failed", model=model.id, error=str(exc))

    async def _add_log_tail(self, model_id: str, container_id: str, message: str) -> None:
        """Completes a crash's message with the container's last log lines (fetched after the fact, so
        the state changes at once), unless something newer has replaced the message meanwhile."""
        try:
            tail = await self.driver_of(model_id).log_tail(container_id)
        except DriverError:
            return
        record = self._records.get(model_id)
        if tail and record is not None and record.slot.state is State.FAILED and record.slot.last_error == message:
            self._write(model_id, replace(record.slot, last_error=f"{message}; last log lines:\n{tail}"))

    async def _stop_stray(self, host: str, model_id: str, container_id: str) -> None:
        model = self._records[model_id].model
        runs_on = list(hosts_of(self._records[model_id].slot, self.policy))
        log.warning("stray_container_stopped", model=model_id, host=host, container=container_id[:12], runs_on=runs_on)
        try:
            await self.fleet.drivers[host].down(model, container_id)
        except DriverError as exc:
            log.error("stray_container_stop_failed", model=model_id, host=host, error=str(exc))

    # ---- tasks and lookups ----------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine, name=getattr(coroutine, "__qualname__", None))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_name(), error=repr(task.exception()), exc_info=task.exception())

    def _configured(self, model_id: str) -> ModelConfig:
        model = self.config.model(model_id)
        assert model is not None, f"model {model_id!r} is not in the config"
        return model

    def _new_record(self, model: ModelConfig, now: float = 0.0) -> ModelRecord:
        return ModelRecord.new(model, now, can_sleep=self.gate is not None)
