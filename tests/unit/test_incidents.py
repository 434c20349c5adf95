"""The rules for what happens outside the plan (waker/core/incidents.py), as pure functions: a failed run
and its back-off, a container's death, one started by hand, a host lost or listed again, a failed wake."""

from __future__ import annotations

from dataclasses import replace

import pytest

from waker.core import incidents
from waker.core.lifecycle import State
from waker.core.plan import HostBudget, Policy, Slot
from waker.errors import IllegalTransition

NOW = 1000.0
POLICY = Policy(max_start_failures=3, start_backoff=120.0)
TWO = Policy(hosts=(HostBudget("one", 1.0), HostBudget("two", 1.0)))


def slot(state: State, **fields) -> Slot:
    return Slot("a", 0.5, state=state, since=NOW - 60, **fields)


def test_a_failed_start_counts_and_answers_the_waiters_with_its_reason():
    failure = incidents.failed_run(slot(State.STARTING), "exited with code 1 while loading", POLICY, NOW)
    assert failure.slot.state is State.FAILED and failure.slot.since == NOW
    assert failure.slot.failures == 1 and failure.slot.last_error == "exited with code 1 while loading"
    assert failure.slot.retry_at == 0.0 and not failure.backoff
    assert failure.answer_waiters


def test_the_third_failure_in_a_row_starts_the_back_off():
    failure = incidents.failed_run(slot(State.STARTING, failures=2), "boom", POLICY, NOW)
    assert failure.backoff and failure.slot.failures == 3 and failure.slot.retry_at == NOW + 120.0


def test_a_crash_while_waking_is_a_failed_wake_too_and_its_waiters_wait_for_a_cold_start():
    failure = incidents.failed_run(slot(State.WAKING, wake_failures=1), "exited", POLICY, NOW)
    assert failure.slot.state is State.FAILED and failure.slot.wake_failures == 2
    assert not failure.answer_waiters


def test_a_failure_only_from_a_state_that_can_fail():
    with pytest.raises(IllegalTransition):
        incidents.failed_run(slot(State.STOPPED), "boom", POLICY, NOW)


@pytest.mark.parametrize(
    ("state", "doing"),
    [
        (State.READY, "serving"),
        (State.SLEEPING, "sleeping"),
        (State.FALLING_ASLEEP, "falling asleep"),
        (State.WAKING, "waking"),
    ],
)
def test_a_death_while_serving_or_in_sleep_mode_is_a_crash_whatever_the_exit_code(state, doing):
    crash = incidents.died(slot(state), "0", "local", several=False, policy=POLICY, now=NOW)
    assert crash is not None and not crash.tear_down
    assert crash.failure.slot.state is State.FAILED
    assert crash.failure.slot.last_error == f"model 'a' exited with code 0 while {doing}"


@pytest.mark.parametrize("state", [State.STOPPED, State.STOPPING, State.FAILED, State.STARTING])
def test_a_death_the_waker_asked_for_or_that_the_start_reports_is_no_crash(state):
    assert incidents.died(slot(state), "137", "local", several=False, policy=POLICY, now=NOW) is None


def test_a_death_while_starting_ends_the_starts_wait_on_its_own_host_only():
    starting = slot(State.STARTING, hosts=("two",))
    assert incidents.dying_start(starting, "two", TWO)
    assert not incidents.dying_start(starting, "one", TWO)
    assert not incidents.dying_start(slot(State.READY, hosts=("two",)), "two", TWO)


def test_with_several_hosts_the_crash_names_the_host_and_a_death_elsewhere_is_an_old_containers():
    ready = slot(State.READY, hosts=("two",))
    crash = incidents.died(ready, "137", "two", several=True, policy=TWO, now=NOW)
    assert crash is not None and crash.failure.slot.last_error.endswith("while serving on host 'two'")
    assert incidents.died(ready, "137", "one", several=True, policy=TWO, now=NOW) is None


def test_a_crash_of_a_model_over_two_hosts_tears_the_other_half_down():
    pair = replace(slot(State.READY, hosts=("one", "two")), host_count=2)
    for host in ("one", "two"):
        crash = incidents.died(pair, "1", host, several=True, policy=TWO, now=NOW)
        assert crash is not None and crash.tear_down


def test_a_container_started_by_hand_is_adopted_while_the_waker_runs_none_and_never_a_ray_worker():
    assert incidents.adopts(slot(State.STOPPED), ray_worker=False)
    assert incidents.adopts(slot(State.FAILED), ray_worker=False)
    assert not incidents.adopts(slot(State.STOPPED), ray_worker=True)
    assert not incidents.adopts(slot(State.STARTING), ray_worker=False)
    assert not incidents.adopts(slot(State.READY), ray_worker=False)


def test_an_adopted_model_over_two_hosts_has_its_worker_on_the_other_host():
    assert incidents.adopted_hosts(slot(State.STOPPED), "two", ("one", "two")) == ("two",)
    pair = replace(slot(State.STOPPED), host_count=2)
    assert incidents.adopted_hosts(pair, "two", ("one", "two")) == ("two", "one")


def test_a_lost_host_stops_the_models_running_or_asleep_there_and_nothing_else():
    slots = {
        "here": replace(slot(State.READY, hosts=("two",)), id="here"),
        "asleep": replace(slot(State.SLEEPING, hosts=("two",)), id="asleep"),
        "starting": replace(slot(State.STARTING, hosts=("two",)), id="starting"),
        "elsewhere": replace(slot(State.READY, hosts=("one",)), id="elsewhere"),
        "pair": replace(slot(State.READY, hosts=("one", "two")), id="pair", host_count=2),
    }
    gone = incidents.lost(slots, "two", TWO, NOW)
    assert sorted(gone) == ["asleep", "here", "pair"]
    assert all(s.state is State.STOPPED and s.since == NOW for s in gone.values())


def test_a_listing_adopts_what_runs_stops_what_is_gone_and_finds_strays():
    slots = {
        "found": replace(slot(State.STOPPED), id="found"),
        "gone": replace(slot(State.READY, hosts=("two",)), id="gone"),
        "stray": replace(slot(State.READY, hosts=("one",)), id="stray"),
        "kept": replace(slot(State.READY, hosts=("two",)), id="kept"),
        "worker_here": replace(slot(State.READY, hosts=("one", "two")), id="worker_here", host_count=2),
    }
    running = {"found": "c-found", "stray": "c-stray", "kept": "c-kept"}
    found = incidents.resync(slots, running, "two", ("one", "two"), TWO, NOW)
    assert found.adopt == {"found": ("c-found", ("two",))}
    assert list(found.gone) == ["gone"] and found.gone["gone"].state is State.STOPPED
    assert found.strays == {"stray": "c-stray"}  # runs on one now: this copy would hold two's GPU unseen
    assert "worker_here" not in found.gone  # its head is on one: two's listing says nothing of it


def test_an_idle_check_calls_off_for_work_and_asks_again_when_the_engine_does_not_answer():
    assert incidents.idle_check(2, True, 0, 0) is incidents.IdleCheck.BUSY
    assert incidents.idle_check(0, True, 1, 0) is incidents.IdleCheck.BUSY  # nginx passed it one
    assert incidents.idle_check(0, True, 0, 0) is incidents.IdleCheck.IDLE
    assert incidents.idle_check(None, True, 0, 0) is incidents.IdleCheck.IDLE  # an engine that does not say
    assert incidents.idle_check(None, False, 0, 0) is incidents.IdleCheck.CHECK_AGAIN
    assert incidents.idle_check(None, False, 0, incidents.MAX_UNANSWERED_CHECKS - 2) is incidents.IdleCheck.CHECK_AGAIN
    assert incidents.idle_check(None, False, 0, incidents.MAX_UNANSWERED_CHECKS - 1) is incidents.IdleCheck.IDLE
    assert incidents.idle_check(None, False, 1, 5) is incidents.IdleCheck.BUSY


def test_a_failed_wake_stops_the_model_and_counts():
    stopping = incidents.wake_failed(slot(State.WAKING, wake_failures=1), NOW)
    assert stopping.state is State.STOPPING and stopping.wake_failures == 2 and stopping.since == NOW
