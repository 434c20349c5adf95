"""The pure scheduler: every rule, on a state made for it (its invariants over generated states are in
test_scheduler_properties.py)."""

from dataclasses import replace

import pytest

from waker.config.hosts import IMPLICIT_HOST
from waker.config.schema import OnBusy
from waker.core.lifecycle import State, StopReason
from waker.core.plan import Grant, Policy, Refuse, Slot, Start, Stop, Waiter
from waker.core.scheduler import decide, release_estimate

NOW = 1000.0
LOCAL = (IMPLICIT_HOST,)
R, S, STARTING, STOPPING, F = State.READY, State.STOPPED, State.STARTING, State.STOPPING, State.FAILED


def slots(*items: Slot) -> dict[str, Slot]:
    return {s.id: s for s in items}


def ready(id, gpu=0.5, **kw) -> Slot:
    defaults = dict(last_active=NOW - 100, ready_since=NOW - 500, idle_timeout=1200)
    return Slot(id=id, gpu_memory=gpu, state=R, **{**defaults, **kw})


def stopped(id, gpu=0.5, **kw) -> Slot:
    return Slot(id=id, gpu_memory=gpu, state=S, **kw)


def wait(*models: str, since: float = NOW - 1) -> tuple[Waiter, ...]:
    return tuple(Waiter(i, m, since) for i, m in enumerate(models))


def test_fast_path_grants_a_ready_model():
    plan = decide(slots(ready("a")), wait("a"), Policy(), NOW)
    assert plan.actions == (Grant(0),)


def test_waiters_join_a_start_in_progress():
    plan = decide(slots(Slot("a", 0.5, state=STARTING, starting_since=NOW - 5)), wait("a", "a"), Policy(), NOW)
    assert plan.of(Start) == [] and plan.of(Grant) == [] and plan.of(Refuse) == []


def test_one_start_serves_every_waiter_of_the_model():
    plan = decide(slots(stopped("a")), wait("a", "a", "a"), Policy(), NOW)
    assert plan.of(Start) == [Start("a", LOCAL)]


def test_models_that_fit_run_together():
    plan = decide(slots(ready("a", 0.4), stopped("b", 0.5)), wait("b"), Policy(), NOW)
    assert plan.actions == (Start("b", LOCAL),)


def test_full_budget_evicts_the_least_recently_used_idle_model():
    state = slots(ready("old", 0.4, last_active=NOW - 500), ready("new", 0.4, last_active=NOW - 10), stopped("b", 0.5))
    plan = decide(state, wait("b"), Policy(), NOW)
    assert plan.actions == (Stop("old", StopReason.EVICTED, "b"),)


def test_the_start_waits_until_the_evicted_container_has_exited():
    state = slots(Slot("old", 0.6, state=STOPPING), stopped("b", 0.5))
    assert decide(state, wait("b"), Policy(), NOW).actions == ()
    state["old"] = replace(state["old"], state=S)
    assert decide(state, wait("b"), Policy(), NOW).actions == (Start("b", LOCAL),)


def test_a_model_with_requests_in_flight_is_never_evicted_the_request_waits():
    state = slots(ready("busy", 0.6, in_flight=1, oldest_request_since=NOW - 3), stopped("b", 0.6))
    plan = decide(state, wait("b"), Policy(), NOW)
    assert plan.actions == ()
    assert plan.wake_at == pytest.approx(NOW - 1 + Policy().queue_timeout)


def test_eviction_takes_only_as_many_models_as_needed():
    state = slots(
        ready("x", 0.3, last_active=NOW - 300),
        ready("y", 0.3, last_active=NOW - 200),
        ready("z", 0.3, last_active=NOW - 100),
        stopped("b", 0.5),
    )
    assert decide(state, wait("b"), Policy(), NOW).of(Stop) == [
        Stop("x", StopReason.EVICTED, "b"),
        Stop("y", StopReason.EVICTED, "b"),
    ]


def test_keep_warm_is_evicted_last():
    state = slots(
        ready("util", 0.3, keep_warm=True, last_active=NOW - 900),
        ready("chat", 0.3, last_active=NOW - 10),
        stopped("b", 0.6),
    )
    assert decide(state, wait("b"), Policy(), NOW).of(Stop) == [Stop("chat", StopReason.EVICTED, "b")]


def test_exclusive_evicts_everything_including_keep_warm():
    state = slots(ready("util", 0.04, keep_warm=True), ready("small", 0.1), stopped("big", 0.8, exclusive=True))
    plan = decide(state, wait("big"), Policy(), NOW)
    assert sorted(plan.of(Stop), key=lambda s: s.model) == [
        Stop("small", StopReason.EVICTED, "big"),
        Stop("util", StopReason.EVICTED, "big"),
    ]


def test_nothing_starts_beside_an_exclusive_model():
    state = slots(ready("big", 0.5, exclusive=True, in_flight=1, oldest_request_since=NOW), stopped("small", 0.1))
    assert decide(state, wait("small"), Policy(), NOW).of(Start) == []


def test_keep_warm_comes_back_when_room_returns_and_not_before():
    util = stopped("util", 0.04, keep_warm=True)
    held = slots(util, ready("big", 0.8, exclusive=True))
    assert decide(held, (), Policy(), NOW).of(Start) == []
    freed = slots(util, stopped("big", 0.8, exclusive=True))
    assert decide(freed, (), Policy(), NOW).actions == (Start("util", LOCAL),)


def test_keep_warm_does_not_take_room_a_waiting_request_needs():
    state = slots(stopped("util", 0.3, keep_warm=True), Slot("old", 0.8, state=STOPPING), stopped("b", 0.8))
    assert decide(state, wait("b"), Policy(), NOW).of(Start) == []


def test_queue_collation_serves_models_in_order_of_their_oldest_waiter():
    state = slots(stopped("a", 0.8), stopped("b", 0.8))
    queue = (Waiter(0, "a", NOW - 4), Waiter(1, "b", NOW - 3), Waiter(2, "a", NOW - 2), Waiter(3, "b", NOW - 1))
    assert decide(state, queue, Policy(), NOW).actions == (Start("a", LOCAL),)
    # Both A requests are in flight (nginx counted them when they arrived); B waits for them.
    state["a"] = replace(
        state["a"],
        state=R,
        ready_since=NOW,
        last_active=NOW,
        idle_timeout=1200,
        in_flight=2,
        oldest_request_since=NOW - 4,
    )
    plan = decide(state, queue, Policy(), NOW)
    assert plan.actions == (Grant(0), Grant(2))
    state["a"] = replace(state["a"], in_flight=0, oldest_request_since=None)
    plan = decide(state, (queue[1], queue[3]), Policy(), NOW)
    assert plan.actions == (Stop("a", StopReason.EVICTED, "b"),)  # two swaps in all, not four


def test_a_waiter_that_left_starts_nothing():
    assert decide(slots(stopped("a")), (), Policy(), NOW).actions == ()


def test_only_one_start_at_a_time():
    state = slots(Slot("a", 0.1, state=STARTING, starting_since=NOW), stopped("b", 0.1))
    assert decide(state, wait("b"), Policy(), NOW).of(Start) == []


def test_reject_mode_refuses_with_429_naming_the_holder_and_a_retry_after_from_its_requests():
    busy = ready("a", 0.8, in_flight=2, oldest_request_since=NOW - 4, mean_request_seconds=10)
    plan = decide(slots(busy, stopped("b", 0.5)), wait("b"), Policy(on_busy=OnBusy.REJECT), NOW)
    (refusal,) = plan.of(Refuse)
    assert refusal.status == 429 and refusal.code == "model_busy"
    assert refusal.retry_after == 6  # the mean request lasts 10 s and the oldest is 4 s old
    assert "'a'" in refusal.message and "2 request(s) in flight" in refusal.message
    assert refusal.holders[0].model == "a" and refusal.holders[0].expected_release_seconds == 6


def test_retry_after_without_history_assumes_the_request_is_half_way():
    busy = ready("a", 0.8, in_flight=1, oldest_request_since=NOW - 30)
    (refusal,) = decide(slots(busy, stopped("b", 0.5)), wait("b"), Policy(on_busy=OnBusy.REJECT), NOW).of(Refuse)
    assert refusal.retry_after == 30


def test_retry_after_for_a_starting_holder_uses_its_last_start_time():
    loading = Slot("a", 0.8, state=STARTING, starting_since=NOW - 20, expected_start_seconds=50)
    assert release_estimate(loading, NOW) == 30


def test_reject_mode_still_evicts_idle_models():
    plan = decide(slots(ready("a", 0.8), stopped("b", 0.5)), wait("b"), Policy(on_busy=OnBusy.REJECT), NOW)
    assert plan.actions == (Stop("a", StopReason.EVICTED, "b"),)


def test_queue_timeout_refuses_with_429():
    busy = ready("a", 0.8, in_flight=1, oldest_request_since=NOW - 700)
    plan = decide(slots(busy, stopped("b", 0.5)), wait("b", since=NOW - 601), Policy(queue_timeout=600), NOW)
    (refusal,) = plan.of(Refuse)
    assert refusal.status == 429 and "queue_timeout" in refusal.message


def test_failed_start_back_off_fails_fast_then_allows_a_retry():
    failed = Slot("a", 0.5, state=F, failures=3, retry_at=NOW + 30, last_error="exited with code 1")
    (refusal,) = decide(slots(failed), wait("a"), Policy(), NOW).of(Refuse)
    assert refusal.status == 503 and refusal.retry_after == 30 and "exited with code 1" in refusal.message
    assert decide(slots(failed), wait("a"), Policy(), NOW + 31).actions == (Start("a", LOCAL),)


def test_a_failure_below_the_limit_is_retried_by_the_next_request():
    failed = Slot("a", 0.5, state=F, failures=1, retry_at=0.0, last_error="boom")
    assert decide(slots(failed), wait("a"), Policy(), NOW).actions == (Start("a", LOCAL),)


def test_idle_stop_counts_from_the_end_of_the_last_request():
    model = ready("a", idle_timeout=60, last_active=NOW - 59)
    plan = decide(slots(model), (), Policy(), NOW)
    assert plan.actions == () and plan.wake_at == pytest.approx(NOW + 1)
    assert decide(slots(model), (), Policy(), NOW + 1).actions == (Stop("a", StopReason.IDLE),)


def test_no_idle_stop_while_in_flight_before_min_uptime_for_keep_warm_or_when_disabled():
    for model in (
        ready("a", idle_timeout=60, in_flight=1, oldest_request_since=NOW - 600),
        ready("a", idle_timeout=60, min_uptime=900, ready_since=NOW - 500),
        ready("a", idle_timeout=60, keep_warm=True),
        ready("a", idle_timeout=0),
        ready("a", idle_timeout=60, pinned=True),
    ):
        assert decide(slots(model), (), Policy(), NOW).of(Stop) == [], model


def test_min_uptime_delays_the_idle_stop_until_it_has_passed():
    model = ready("a", idle_timeout=60, min_uptime=900, ready_since=NOW - 500)
    assert decide(slots(model), (), Policy(), NOW).wake_at == pytest.approx(NOW + 400)


def test_models_without_a_gpu_budget_always_fit():
    state = slots(ready("a", 1.0), stopped("cpu", 0.0))
    assert decide(state, wait("cpu"), Policy(), NOW).actions == (Start("cpu", LOCAL),)
