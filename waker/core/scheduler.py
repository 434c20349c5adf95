"""GPU scheduling as a pure function: `decide(slots, queue, policy, now) -> Plan`.

No I/O and no clock inside: the shell (`supervisor`) passes the state and the time, then carries out
the plan (start or stop containers, answer waiting requests) and calls `decide` again when something
changes or when `Plan.wake_at` comes.

Rules, in the order they apply:
1. A waiter whose model is ready is granted. One whose model is in its failure back-off is refused
   at once with the last error. One that waited longer than `queue_timeout` for room is refused.
2. Models with waiters are considered in the order of their oldest waiter (queue collation: A B A B
   makes two swaps, not four). One start at a time: vLLM sizes its memory from what is free when it
   starts, so two concurrent starts would race for the same memory.
3. A model starts (a sleeping one wakes) when its `gpu_memory` fits beside what the others hold (a
   sleeping model holds its `sleep_memory`; sum within `capacity`, and nothing beside an `exclusive`
   model, asleep or not). Otherwise room is made the least costly way: idle sleep-capable models are
   put to sleep if that is enough; if not, sleeping models are stopped, then idle models that cannot
   sleep, then the sleep-capable ones, least recently used first and `keep_warm` models last in each
   group, keeping only the steps needed. Models with requests in flight, pinned models and models
   starting or waking are never touched. The start waits until those models are asleep or exited.
4. A start or wake also needs the host's memory (measured where it is this machine's): what is
   available must stay above the floor once the model has taken what it declares (`memory`; what
   a wake takes back is that share of it). Short of memory, the least recently used idle model is
   stopped (one at a time: memory is measured again once its container has exited); with none idle,
   the request waits for the busy ones as for room (or is refused, per `on_busy`); with none of
   ours on the host, it is refused with 503 `insufficient_memory` and the figures. Nothing starts
   while memory a stop freed is still on its way back.
5. When room cannot be made, the request waits (`on_busy = "queue"`) or is refused with 429 and a
   Retry-After estimated from the holders' state (`on_busy = "reject"`).
6. With no one waiting for room, `keep_warm` models that are down are started again when they fit.
   A keep_warm model stopped by hand stays down until a request or a manual start asks for it; one
   whose start a `block` workload called off is tried again after the refusal's Retry-After.
7. Ready models idle for `idle_timeout` (counted from the end of their last request, never before
   `min_uptime`) are put to sleep if they can, else stopped; `keep_warm`, pinned and
   `idle_timeout = 0` models never are. A model can sleep when its `sleep_level` is 1 or 2 and fewer
   than `max_wake_failures` wakes in a row have failed.
8. A model asleep for its `sleep_timeout` is stopped, unless requests wait for it, or it is keep_warm
   or pinned. One start or wake at a time, as for starts: a wake takes back memory a start would size
   itself from.

With several hosts (`[[host]]`), each host has its own budget, and every rule above applies per host:
a model that is down is first placed (`placement.place`: its named host, else where it fits now, then
where it last ran, then the emptier host), then fitted, made room for and started on the host(s) it
was placed on; one start at a time per host, and a model waiting for room holds back only the models
queued after it on the same host. A model spread over two hosts is charged on both. A model that
cannot be placed (its host is down) is refused at once with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from waker.config.schema import OnBusy
from waker.core.lifecycle import SleepReason, State, StopReason
from waker.core.memory import gib
from waker.core.placement import HostView, Need, Unplaceable, place
from waker.core.plan import (
    Action,
    Grant,
    Holder,
    MemoryView,
    Plan,
    Policy,
    Refuse,
    Sleep,
    Slot,
    Start,
    Stop,
    Waiter,
    Wake,
)

EPSILON = 1e-9
OCCUPYING = (State.STARTING, State.READY, State.STOPPING, State.FALLING_ASLEEP, State.SLEEPING, State.WAKING)
COMING_UP = (State.STARTING, State.WAKING)  # one at a time
GOING_DOWN = (State.STOPPING, State.FALLING_ASLEEP)  # still holding all they had, soon less


@dataclass
class _Planner:
    slots: dict[str, Slot]
    policy: Policy
    now: float
    actions: list[Action] = field(default_factory=list)
    wake_at: float = math.inf
    stopping: set[str] = field(default_factory=set)

    def later(self, when: float) -> None:
        self.wake_at = min(self.wake_at, when)

    def occupying(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.state in OCCUPYING]

    def on(self, hosts: tuple[str, ...]) -> list[Slot]:
        """The models occupying any of `hosts`."""
        return occupying_on(self.slots, hosts, self.policy)

    def coming_up_on(self, hosts: tuple[str, ...]) -> bool:
        return any(s.state in COMING_UP for s in self.on(hosts))

    def start(self, slot: Slot, hosts: tuple[str, ...]) -> None:
        self.actions.append(Start(slot.id, hosts))
        self.slots[slot.id] = replace(slot, state=State.STARTING, starting_since=self.now, hosts=hosts)

    def stop(self, slot: Slot, reason: StopReason, for_model: str | None = None) -> None:
        self.actions.append(Stop(slot.id, reason, for_model))
        self.slots[slot.id] = replace(slot, state=State.STOPPING)

    def sleep(self, slot: Slot, reason: SleepReason, for_model: str | None = None) -> None:
        self.actions.append(Sleep(slot.id, reason, for_model))
        self.slots[slot.id] = replace(slot, state=State.FALLING_ASLEEP, since=self.now)

    def wake(self, slot: Slot) -> None:
        self.actions.append(Wake(slot.id))
        self.slots[slot.id] = replace(slot, state=State.WAKING, since=self.now)


def held(slot: Slot) -> float:
    """The part of the GPU `slot` holds now (falling asleep or waking, all of it)."""
    return slot.sleep_memory if slot.state is State.SLEEPING else slot.gpu_memory


def hosts_of(slot: Slot, policy: Policy) -> tuple[str, ...]:
    """Where an occupying model is (a model started before hosts were known is on the first)."""
    return slot.hosts or (policy.budgets[0].name,)


def occupying_on(slots: dict[str, Slot], hosts: tuple[str, ...], policy: Policy) -> list[Slot]:
    return [s for s in slots.values() if s.state in OCCUPYING and set(hosts_of(s, policy)) & set(hosts)]


def where(slot: Slot, slots: dict[str, Slot], policy: Policy) -> tuple[str, ...] | Unplaceable:
    """The host(s) of `slot`: where it is, if it occupies any; else where `placement.place` puts it now."""
    if slot.state in OCCUPYING:
        return hosts_of(slot, policy)
    views = []
    for budget in policy.budgets:
        there = [s for s in occupying_on(slots, (budget.name,), policy) if s.id != slot.id]
        views.append(
            HostView(
                budget.name,
                budget.capacity,
                budget.up,
                used=sum(held(s) for s in there),
                exclusive_running=any(s.exclusive for s in there),
                running=len(there),
                last_ran_here=budget.name in slot.hosts,
            )
        )
    placed = place(Need(slot.gpu_memory, slot.exclusive, slot.host, slot.host_count), tuple(views))
    return placed if isinstance(placed, Unplaceable) else placed.hosts


def fits_on(candidate: Slot, hosts: tuple[str, ...], slots: dict[str, Slot], policy: Policy) -> bool:
    """`fits` on each of `hosts`, against what occupies that host and its own capacity."""
    return all(
        fits(candidate, occupying_on(slots, (b.name,), policy), b.capacity) for b in policy.budgets if b.name in hosts
    )


def fits(candidate: Slot, staying: list[Slot], capacity: float) -> bool:
    others = [s for s in staying if s.id != candidate.id]
    if others and (candidate.exclusive or any(s.exclusive for s in others)):
        return False
    return sum(held(s) for s in others) + candidate.gpu_memory <= capacity + EPSILON


def memory_need(slot: Slot) -> int:
    """The host memory `slot` takes to come up: all it declares, or for a wake what sleeping gave back."""
    if slot.state is State.SLEEPING and slot.gpu_memory > 0:
        return round(slot.memory * max(0.0, slot.gpu_memory - slot.sleep_memory) / slot.gpu_memory)
    return slot.memory


def memory_short(candidate: Slot, hosts: tuple[str, ...], policy: Policy) -> tuple[str, MemoryView] | None:
    """The first of `hosts` where `candidate` coming up would take available memory below the floor
    (or where memory a stop freed is still on its way back), with its memory; None if it fits, or
    where no floor is kept."""
    need = memory_need(candidate)
    for budget in policy.budgets:
        view = budget.memory
        if budget.name in hosts and view is not None and view.floor > 0 and (view.releasing or view.headroom < need):
            return budget.name, view
    return None


def can_sleep(slot: Slot, policy: Policy) -> bool:
    return slot.sleep_level > 0 and slot.wake_failures < policy.max_wake_failures


def evictable(slot: Slot) -> bool:
    """Idle and unpinned: it may be put to sleep or stopped to make room."""
    if slot.pinned:
        return False
    return slot.state is State.SLEEPING or (slot.state is State.READY and slot.in_flight == 0)


@dataclass(frozen=True, slots=True)
class Room:
    """What to do so that a model fits: models to put to sleep and models to stop."""

    to_sleep: tuple[Slot, ...]
    to_stop: tuple[Slot, ...]


def room_for(candidate: Slot, occupying: list[Slot], policy: Policy, capacity: float) -> Room | None:
    """The least costly way to make room for `candidate`, or None if even stopping every evictable
    model would not. Steps in order of cost (LRU first, keep_warm last in each group): sleep idle
    sleep-capable models; stop sleeping ones; stop idle ones that cannot sleep; stop the sleep-capable
    ones after all. Steps are taken until it fits, then those that turn out unneeded are dropped."""
    staying = {s.id: s for s in occupying if s.id != candidate.id and s.state is not State.STOPPING}

    def lru(slots: list[Slot]) -> list[Slot]:
        return sorted(slots, key=lambda s: (s.keep_warm, s.last_active))

    idle = lru([s for s in staying.values() if s.state is State.READY and evictable(s)])
    sleepers = [s for s in idle if can_sleep(s, policy)]
    asleep = lru([s for s in staying.values() if s.state is State.SLEEPING and evictable(s)])
    steps = [
        *((True, s) for s in sleepers),
        *((False, s) for s in asleep),
        *((False, s) for s in idle if not can_sleep(s, policy)),
        *((False, s) for s in sleepers),
    ]

    def fits_after(taken: list[tuple[bool, Slot]]) -> bool:
        after = dict(staying)
        for sleeps, slot in taken:
            if sleeps:
                after[slot.id] = replace(slot, state=State.SLEEPING)
            else:
                after.pop(slot.id, None)
        return fits(candidate, list(after.values()), capacity)

    chosen: list[tuple[bool, Slot]] = []
    for step in steps:
        if fits_after(chosen):
            break
        chosen.append(step)
    if not fits_after(chosen):
        return None
    for step in reversed(list(chosen)):
        if fits_after([c for c in chosen if c is not step]):
            chosen.remove(step)
    stopped = {slot.id for sleeps, slot in chosen if not sleeps}
    return Room(
        tuple(slot for sleeps, slot in chosen if sleeps and slot.id not in stopped),
        tuple(slot for sleeps, slot in chosen if not sleeps),
    )


def room_on(candidate: Slot, hosts: tuple[str, ...], slots: dict[str, Slot], policy: Policy) -> Room | None:
    """`room_for` on each of `hosts`, together: a model charged on two hosts needs room on both (a
    model stopped on one for it frees its share of the other too, and is stopped once)."""
    rooms = []
    for budget in (b for b in policy.budgets if b.name in hosts):
        room = room_for(candidate, occupying_on(slots, (budget.name,), policy), policy, budget.capacity)
        if room is None:
            return None
        rooms.append(room)
    to_stop = {s.id: s for room in rooms for s in room.to_stop}
    to_sleep = {s.id: s for room in rooms for s in room.to_sleep if s.id not in to_stop}
    return Room(tuple(to_sleep.values()), tuple(to_stop.values()))


def release_estimate(slot: Slot, now: float) -> int | None:
    """Seconds until `slot` could give its memory back, from what is known of it; None if unknowable."""
    if slot.pinned:
        return None
    if slot.state in GOING_DOWN or evictable(slot):
        return 1
    if slot.state is State.STARTING:
        elapsed = now - slot.starting_since
        expected = slot.expected_start_seconds or elapsed * 2  # no history: assume half-way
        return max(1, math.ceil(expected - elapsed))
    if slot.state is State.WAKING:
        return max(1, math.ceil(now - slot.since))  # assume half-way
    if slot.oldest_request_since is None:
        return 1
    elapsed = now - slot.oldest_request_since
    # With a history, a request lasts about as long as the mean; without one, about twice its age.
    expected = slot.mean_request_seconds if slot.mean_request_seconds else elapsed * 2
    return max(1, math.ceil(max(expected - elapsed, 1.0)))


def holders_of(candidate: Slot, occupying: list[Slot], now: float) -> tuple[Holder, ...]:
    """The models that keep `candidate` out: the non-evictable ones among those it would displace."""
    staying = [s for s in occupying if s.id != candidate.id]
    blocking = [s for s in staying if not evictable(s) and s.state not in GOING_DOWN]
    return tuple(
        Holder(
            model=s.id,
            state="pinned" if s.pinned else s.state.value,
            in_flight=s.in_flight,
            idle_seconds=int(now - s.last_active) if s.in_flight == 0 and s.state is State.READY else 0,
            expected_release_seconds=release_estimate(s, now),
        )
        for s in blocking
    )


def _busy_refusal(waiter: Waiter, candidate: Slot, holders: tuple[Holder, ...], reason: str) -> Refuse:
    known = [h.expected_release_seconds for h in holders if h.expected_release_seconds is not None]
    retry_after = max(known) if known else None
    described = (
        "; ".join(
            f"{h.model!r} ({h.state}, {h.in_flight} request(s) in flight, idle {h.idle_seconds} s, "
            + (
                f"expected release in ~{h.expected_release_seconds} s)"
                if h.expected_release_seconds is not None
                else "no release expected)"
            )
            for h in holders
        )
        or "other models"
    )
    return Refuse(
        waiter.id,
        429,
        "model_busy",
        f"model {candidate.id!r} cannot start {reason}: the GPU is held by {described}",
        retry_after,
        holders,
    )


def decide(slots: dict[str, Slot], queue: tuple[Waiter, ...] | list[Waiter], policy: Policy, now: float) -> Plan:
    p = _Planner(dict(slots), policy, now)
    waiting: list[Waiter] = []

    for waiter in queue:
        slot = p.slots[waiter.model]
        if slot.state is State.READY:
            p.actions.append(Grant(waiter.id))
        elif slot.state is State.FAILED and now < slot.retry_at:
            p.actions.append(
                Refuse(
                    waiter.id,
                    503,
                    "model_failed",
                    f"model {slot.id!r} failed {slot.failures} times in a row (at start or while serving); "
                    f"next attempt in {math.ceil(slot.retry_at - now)} s. Last error: {slot.last_error}",
                    math.ceil(slot.retry_at - now),
                )
            )
        elif slot.state not in COMING_UP and now - waiter.since >= policy.queue_timeout:
            placed = where(slot, p.slots, p.policy)
            holders = holders_of(slot, p.occupying() if isinstance(placed, Unplaceable) else p.on(placed), now)
            p.actions.append(_busy_refusal(waiter, slot, holders, f"within queue_timeout ({policy.queue_timeout:g} s)"))
        else:
            waiting.append(waiter)

    blocked = _start_for_waiters(p, waiting)
    if not blocked and not any(s.state in COMING_UP for s in p.slots.values()):
        _restore_keep_warm(p)
    _stop_idle(p)
    _stop_long_asleep(p, {w.model for w in waiting})
    return Plan(tuple(p.actions), None if p.wake_at == math.inf else p.wake_at)


def _start_for_waiters(p: _Planner, waiting: list[Waiter]) -> bool:
    """Starts or makes room for the models waiters need; True if some waiter still waits for room."""
    order: dict[str, list[Waiter]] = {}
    for waiter in waiting:
        order.setdefault(waiter.model, []).append(waiter)
    held_back: set[str] = set()  # hosts whose queue waits for an earlier model (FIFO per host)

    def hold(hosts: tuple[str, ...]) -> None:
        held_back.update(hosts)

    for model, waiters in order.items():
        slot = p.slots[model]
        if slot.state in COMING_UP:
            continue  # they join the start or wake in progress
        hosts = where(slot, p.slots, p.policy)
        if isinstance(hosts, Unplaceable):
            p.actions += [
                Refuse(w.id, 503, "host_unavailable", f"model {model!r} cannot start: {hosts.reason}") for w in waiters
            ]
            continue
        if held_back & set(hosts) or slot.state in GOING_DOWN or p.coming_up_on(hosts):
            # After an earlier model on its host; once its container has exited it starts, once asleep
            # it wakes; one start or wake at a time per host.
            hold(hosts)
            continue
        occupying = p.on(hosts)
        if fits_on(slot, hosts, p.slots, p.policy):
            short = memory_short(slot, hosts, p.policy)
            if short is None:
                if slot.state is State.SLEEPING:
                    p.wake(slot)
                else:
                    p.start(slot, hosts)
            elif _make_memory(p, slot, waiters, *short):
                hold(hosts)  # it waits for memory; the models queued after it on the host wait too
            continue
        hold(hosts)
        if any(s.state is State.FALLING_ASLEEP for s in occupying):
            continue  # what they free is known once they are asleep: plan more room then, if needed
        room = room_on(slot, hosts, p.slots, p.policy)
        if room is not None:
            for victim in room.to_sleep:
                p.sleep(victim, SleepReason.ROOM, model)
            for victim in room.to_stop:
                p.stop(victim, StopReason.EVICTED, model)
            continue  # wait until they are asleep or their containers have exited
        if p.policy.on_busy is OnBusy.REJECT:
            holders = holders_of(slot, occupying, p.now)
            p.actions += [_busy_refusal(w, slot, holders, "now") for w in waiters]
            held_back.difference_update(hosts)
            continue
        for waiter in waiters:
            p.later(waiter.since + p.policy.queue_timeout)
    return bool(held_back)


def _make_memory(p: _Planner, slot: Slot, waiters: list[Waiter], host: str, memory: MemoryView) -> bool:
    """Frees memory on `host` for `slot`; False if its waiters were refused instead."""
    there = [s for s in p.on((host,)) if s.id != slot.id]
    if memory.releasing or any(s.state in GOING_DOWN for s in there):
        return True  # memory on its way back: measured again once it is back
    idle = sorted((s for s in there if evictable(s)), key=lambda s: (s.keep_warm, s.last_active))
    if idle:
        p.stop(idle[0], StopReason.EVICTED, slot.id)
        return True
    if not there:
        need = memory_need(slot)
        message = (
            f"model {slot.id!r} cannot start: host '{host}' has {gib(memory.available)} of memory available "
            f"(of {gib(memory.total)}), the floor kept free is {gib(memory.floor)} ([scheduler] memory_floor) "
            + (f"and the model declares {gib(need)} (its `memory`)" if need else "and nothing is left above it")
            + ". None of the waker's models run there: other programs or the page cache hold that memory. "
            "Stop what you do not need (or drop clean caches: `sync; echo 3 > /proc/sys/vm/drop_caches`), "
            "or lower the floor or the model's `memory` if they are wrong"
        )
        p.actions += [Refuse(w.id, 503, "insufficient_memory", message) for w in waiters]
        return False
    if p.policy.on_busy is OnBusy.REJECT:
        holders = holders_of(slot, there, p.now)
        p.actions += [_busy_refusal(w, slot, holders, "now: the host's memory is short") for w in waiters]
        return False
    for waiter in waiters:
        p.later(waiter.since + p.policy.queue_timeout)
    return True


def _restore_keep_warm(p: _Planner) -> None:
    for slot in sorted(p.slots.values(), key=lambda s: s.id):
        if not slot.keep_warm or slot.suspended or slot.state not in (State.STOPPED, State.FAILED, State.SLEEPING):
            continue
        if p.now < slot.retry_at:  # in back-off, or its last start was called off (a `block` workload)
            p.later(slot.retry_at)
            continue
        hosts = where(slot, p.slots, p.policy)
        if (
            not isinstance(hosts, Unplaceable)
            and fits_on(slot, hosts, p.slots, p.policy)
            and memory_short(slot, hosts, p.policy) is None
        ):
            if slot.state is State.SLEEPING:  # put to sleep for another model's room, which is back
                p.wake(slot)
            else:
                p.start(slot, hosts)
            return


def _stop_idle(p: _Planner) -> None:
    for slot in list(p.slots.values()):
        if (
            slot.state is not State.READY
            or slot.keep_warm
            or slot.pinned
            or slot.idle_timeout <= 0
            or slot.in_flight > 0
        ):
            continue
        due = max(slot.last_active + slot.idle_timeout, slot.ready_since + slot.min_uptime)
        if p.now < due:
            p.later(due)
        elif can_sleep(slot, p.policy):
            p.sleep(slot, SleepReason.IDLE)
        else:
            p.stop(slot, StopReason.IDLE)


def _stop_long_asleep(p: _Planner, waited_for: set[str]) -> None:
    for slot in list(p.slots.values()):
        if (
            slot.state is not State.SLEEPING
            or slot.sleep_timeout <= 0
            or slot.keep_warm
            or slot.pinned
            or slot.id in waited_for
        ):
            continue
        due = slot.since + slot.sleep_timeout
        if p.now >= due:
            p.stop(slot, StopReason.SLEEP_TIMEOUT)
        else:
            p.later(due)
