"""The pure scheduler's sleep-mode rules: sleep instead of stop, wake instead of start, the budget
with sleeping models (the invariants over generated states, sleep states included, are in
test_scheduler_properties.py)."""

from dataclasses import replace

import pytest

from tests.unit.test_scheduler import LOCAL, NOW, ready, slots, stopped, wait
from waker.config.schema import OnBusy
from waker.core.lifecycle import SleepReason, State, StopReason
from waker.core.plan import Grant, Policy, Refuse, Sleep, Slot, Start, Stop, Wake
from waker.core.scheduler import decide, held

ASLEEP, FALLING, WAKING = State.SLEEPING, State.FALLING_ASLEEP, State.WAKING


def sleeper(id, gpu=0.5, asleep=0.1, **kw) -> Slot:
    """A ready model that can sleep at level 2, holding `asleep` while asleep."""
    return ready(id, gpu, sleep_level=2, sleep_memory=asleep, **kw)


def sleeping(id, gpu=0.5, asleep=0.1, **kw) -> Slot:
    defaults = {"since": NOW - 10, "last_active": NOW - 200, "sleep_timeout": 3600}
    return Slot(id=id, gpu_memory=gpu, state=ASLEEP, sleep_level=2, sleep_memory=asleep, **{**defaults, **kw})


# ---- idle: sleep instead of stop; asleep too long: stop ----


def test_an_idle_sleep_capable_model_sleeps_instead_of_stopping():
    model = sleeper("a", idle_timeout=60, last_active=NOW - 60)
    assert decide(slots(model), (), Policy(), NOW).actions == (Sleep("a", SleepReason.IDLE),)
    assert decide(slots(ready("b", idle_timeout=60, last_active=NOW - 60)), (), Policy(), NOW).actions == (
        Stop("b", StopReason.IDLE),
    )


def test_a_model_whose_wakes_failed_too_often_is_stopped_instead_of_slept():
    model = sleeper("a", idle_timeout=60, last_active=NOW - 60, wake_failures=2)
    assert decide(slots(model), (), Policy(max_wake_failures=2), NOW).actions == (Stop("a", StopReason.IDLE),)
    assert decide(slots(model), (), Policy(max_wake_failures=3), NOW).actions == (Sleep("a", SleepReason.IDLE),)


def test_never_sleep_a_model_with_requests_in_flight():
    busy = sleeper("a", idle_timeout=60, last_active=NOW - 600, in_flight=1, oldest_request_since=NOW - 5)
    assert decide(slots(busy), (), Policy(), NOW).actions == ()
    # Nor for room: the request waits.
    plan = decide(slots(replace(busy, gpu_memory=0.8), stopped("b", 0.5)), wait("b"), Policy(), NOW)
    assert plan.actions == ()


def test_asleep_for_sleep_timeout_it_is_stopped_and_not_before():
    model = sleeping("a", since=NOW - 3599, sleep_timeout=3600)
    plan = decide(slots(model), (), Policy(), NOW)
    assert plan.actions == () and plan.wake_at == pytest.approx(NOW + 1)
    assert decide(slots(model), (), Policy(), NOW + 1).actions == (Stop("a", StopReason.SLEEP_TIMEOUT),)


def test_no_sleep_timeout_stop_when_disabled_for_keep_warm_pinned_or_a_model_someone_waits_for():
    for model in (
        sleeping("a", since=NOW - 9999, sleep_timeout=0),
        sleeping("a", since=NOW - 9999, keep_warm=True),
        sleeping("a", since=NOW - 9999, pinned=True),
    ):
        assert decide(slots(model), (), Policy(), NOW).of(Stop) == [], model
    # Its waiter cannot have it yet (a busy model holds the room); the sleeper is kept for the wake.
    state = slots(sleeping("a", 0.5, since=NOW - 9999), ready("b", 0.8, in_flight=1, oldest_request_since=NOW))
    assert decide(state, wait("a"), Policy(), NOW).actions == ()


# ---- a request for a sleeping model wakes it ----


def test_one_wake_serves_every_waiter_of_a_sleeping_model():
    plan = decide(slots(sleeping("a")), wait("a", "a", "a"), Policy(), NOW)
    assert plan.actions == (Wake("a"),)
    waking = slots(Slot("a", 0.5, state=WAKING, since=NOW, sleep_level=2, sleep_memory=0.1))
    assert decide(waking, wait("a", "a"), Policy(), NOW).actions == ()  # they join the wake
    assert decide(slots(sleeper("a")), wait("a", "a"), Policy(), NOW).actions == (Grant(0), Grant(1))


def test_waiters_of_a_waking_model_are_not_refused_by_the_queue_timeout():
    waking = slots(Slot("a", 0.5, state=WAKING, since=NOW - 5, sleep_level=1, sleep_memory=0.5))
    assert decide(waking, wait("a", since=NOW - 700), Policy(queue_timeout=600), NOW).of(Refuse) == []


def test_a_request_for_a_model_falling_asleep_waits_for_the_sleep_then_wakes_it():
    falling = Slot("a", 0.5, state=FALLING, since=NOW, sleep_level=1, sleep_memory=0.5)
    assert decide(slots(falling), wait("a"), Policy(), NOW).actions == ()
    asleep = replace(falling, state=ASLEEP)
    assert decide(slots(asleep), wait("a"), Policy(), NOW).actions == (Wake("a"),)


def test_waking_needs_the_whole_gpu_memory_again():
    state = slots(sleeping("a", 0.5, asleep=0.1), ready("b", 0.6, in_flight=1, oldest_request_since=NOW - 2))
    assert decide(state, wait("a"), Policy(), NOW).actions == ()  # 0.6 + 0.5 > 1: it waits
    state["b"] = sleeper("b", 0.6, asleep=0.1)
    assert decide(state, wait("a"), Policy(), NOW).actions == (Sleep("b", SleepReason.ROOM, "a"),)


def test_one_start_or_wake_at_a_time():
    waking = Slot("a", 0.1, state=WAKING, since=NOW, sleep_level=2)
    assert decide(slots(waking, stopped("b", 0.1)), wait("b"), Policy(), NOW).actions == ()
    starting = Slot("a", 0.1, state=State.STARTING, starting_since=NOW)
    assert decide(slots(starting, sleeping("b", 0.1)), wait("b"), Policy(), NOW).actions == ()


# ---- room: sleep first if that is enough, else stop sleeping ones ----


def test_the_budget_counts_what_sleeping_models_hold():
    state = slots(sleeping("a", 0.5, asleep=0.05), stopped("b", 0.9))
    assert held(state["a"]) == 0.05
    assert decide(state, wait("b"), Policy(), NOW).actions == (Start("b", LOCAL),)
    state["a"] = sleeping("a", 0.5, asleep=0.2)
    assert decide(state, wait("b"), Policy(), NOW).actions == (Stop("a", StopReason.EVICTED, "b"),)


def test_idle_models_are_put_to_sleep_for_room_when_that_is_enough():
    state = slots(
        sleeper("old", 0.4, asleep=0.05, last_active=NOW - 500),
        sleeper("new", 0.4, asleep=0.05, last_active=NOW - 10),
        stopped("b", 0.5),
    )
    assert decide(state, wait("b"), Policy(), NOW).actions == (Sleep("old", SleepReason.ROOM, "b"),)


def test_when_sleeping_is_not_enough_sleeping_models_are_stopped_least_recently_used_first():
    state = slots(
        sleeping("older", 0.5, asleep=0.3, last_active=NOW - 900),
        sleeping("newer", 0.5, asleep=0.3, last_active=NOW - 800),
        sleeper("idle", 0.2, asleep=0.2, last_active=NOW - 10),
        stopped("b", 0.5),
    )
    # Sleeping "idle" frees nothing; stopping "older" is enough.
    assert decide(state, wait("b"), Policy(), NOW).actions == (Stop("older", StopReason.EVICTED, "b"),)


def test_a_sleep_and_a_stop_together_when_neither_alone_makes_room():
    state = slots(sleeper("a", 0.5, asleep=0.2), sleeping("s", 0.3, asleep=0.3), stopped("c", 0.6))
    plan = decide(state, wait("c"), Policy(), NOW)
    assert set(plan.actions) == {Sleep("a", SleepReason.ROOM, "c"), Stop("s", StopReason.EVICTED, "c")}


def test_idle_models_that_cannot_sleep_are_stopped_before_sleep_capable_ones():
    state = slots(
        ready("plain", 0.5, last_active=NOW - 10),
        sleeper("capable", 0.5, asleep=0.5, last_active=NOW - 900),
        stopped("b", 0.5),
    )
    assert decide(state, wait("b"), Policy(), NOW).actions == (Stop("plain", StopReason.EVICTED, "b"),)


def test_the_start_waits_until_the_models_put_to_sleep_are_asleep():
    state = slots(Slot("a", 0.8, state=FALLING, since=NOW, sleep_level=2, sleep_memory=0.05), stopped("b", 0.5))
    assert decide(state, wait("b"), Policy(), NOW).actions == ()
    state["a"] = replace(state["a"], state=ASLEEP)
    assert decide(state, wait("b"), Policy(), NOW).actions == (Start("b", LOCAL),)


def test_an_exclusive_model_stops_sleeping_models_too():
    state = slots(sleeping("a", 0.3, asleep=0.0), sleeper("b", 0.3, asleep=0.0), stopped("big", 0.5, exclusive=True))
    plan = decide(state, wait("big"), Policy(), NOW)
    assert sorted(plan.of(Stop), key=lambda s: s.model) == [
        Stop("a", StopReason.EVICTED, "big"),
        Stop("b", StopReason.EVICTED, "big"),
    ]
    assert plan.of(Sleep) == []


def test_reject_mode_puts_models_to_sleep_rather_than_refusing():
    state = slots(sleeper("a", 0.8, asleep=0.1), stopped("b", 0.5))
    assert decide(state, wait("b"), Policy(on_busy=OnBusy.REJECT), NOW).actions == (Sleep("a", SleepReason.ROOM, "b"),)


def test_a_keep_warm_model_put_to_sleep_for_room_wakes_when_the_room_is_back():
    util = sleeping("util", 0.3, asleep=0.05, keep_warm=True)
    assert decide(slots(util, ready("big", 0.8)), (), Policy(), NOW).actions == ()
    assert decide(slots(util, stopped("big", 0.8)), (), Policy(), NOW).actions == (Wake("util"),)
    assert decide(slots(replace(util, suspended=True), stopped("big", 0.8)), (), Policy(), NOW).actions == ()
