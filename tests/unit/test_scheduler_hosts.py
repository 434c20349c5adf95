"""The pure scheduler over several hosts (`[[host]]`): placement before fitting, a budget per host,
one start at a time per host, a queue per host, a model over two hosts charged on both."""

from dataclasses import replace

from tests.unit.test_scheduler import NOW, ready, slots, stopped, wait
from waker.config.schema import OnBusy
from waker.core.lifecycle import SleepReason, State, StopReason
from waker.core.plan import HostBudget, Policy, Refuse, Sleep, Start, Stop
from waker.core.scheduler import decide

ONE, TWO = ("one",), ("two",)
TWO_BOXES = Policy(hosts=(HostBudget("one", 1.0), HostBudget("two", 1.0)))


def on(hosts, slot, **kw):
    return replace(slot, hosts=hosts, **kw)


def test_a_model_starts_where_it_fits_now_instead_of_evicting():
    state = slots(on(ONE, ready("a", 0.6)), stopped("b", 0.6))
    assert decide(state, wait("b"), TWO_BOXES, NOW).actions == (Start("b", TWO),)


def test_where_both_fit_the_host_it_last_ran_on_is_preferred():
    state = slots(on(TWO, stopped("b", 0.3)))
    assert decide(state, wait("b"), TWO_BOXES, NOW).actions == (Start("b", TWO),)
    assert decide(slots(stopped("b", 0.3)), wait("b"), TWO_BOXES, NOW).actions == (Start("b", ONE),)


def test_without_history_the_emptier_host_is_taken():
    state = slots(on(ONE, ready("a", 0.3)), stopped("b", 0.3))
    assert decide(state, wait("b"), TWO_BOXES, NOW).actions == (Start("b", TWO),)


def test_a_model_that_names_its_host_makes_room_there_even_if_the_other_is_empty():
    state = slots(on(ONE, ready("a", 0.6)), stopped("b", 0.6, host="one"))
    assert decide(state, wait("b"), TWO_BOXES, NOW).actions == (Stop("a", StopReason.EVICTED, "b"),)


def test_budgets_are_per_host_where_nothing_fits_the_least_costly_host_makes_room():
    state = slots(on(ONE, ready("a", 0.7)), on(TWO, ready("c", 0.7, in_flight=2)), stopped("b", 0.6))
    # two is busy (a request in flight), one holds an idle model: evict there, start there afterwards.
    assert decide(state, wait("b"), TWO_BOXES, NOW).actions == (Stop("a", StopReason.EVICTED, "b"),)


def test_one_start_at_a_time_per_host_not_across_hosts():
    state = slots(on(ONE, replace(stopped("a", 0.3), state=State.STARTING)), on(TWO, stopped("b", 0.3)))
    assert decide(state, wait("a", "b"), TWO_BOXES, NOW).actions == (Start("b", TWO),)
    state = slots(on(ONE, replace(stopped("a", 0.3), state=State.STARTING)), on(ONE, stopped("c", 0.3, host="one")))
    assert decide(state, wait("a", "c"), TWO_BOXES, NOW).actions == ()


def test_a_model_waiting_for_room_holds_back_only_its_own_host_s_queue():
    state = slots(
        on(ONE, ready("busy", 0.8, in_flight=1)),
        stopped("a", 0.5, host="one"),
        stopped("later-one", 0.1, host="one"),
        stopped("b", 0.5, host="two"),
    )
    plan = decide(state, wait("a", "later-one", "b"), TWO_BOXES, NOW)
    assert plan.actions == (Start("b", TWO),)  # later-one would fit on one, but a is first in one's queue


def test_a_model_over_two_hosts_needs_room_on_both_and_is_charged_on_both():
    state = slots(
        on(ONE, ready("a", 0.5)),
        on(TWO, ready("c", 0.5, sleep_level=1, sleep_memory=0.1)),
        stopped("big", 0.8, host="one", host_count=2),
    )
    plan = decide(state, wait("big"), TWO_BOXES, NOW)
    assert set(plan.actions) == {Stop("a", StopReason.EVICTED, "big"), Sleep("c", SleepReason.ROOM, "big")}
    freed = slots(
        on(TWO, replace(ready("c", 0.5, sleep_level=1, sleep_memory=0.1), state=State.SLEEPING)),
        stopped("big", 0.8, host="one", host_count=2),
    )
    assert decide(freed, wait("big"), TWO_BOXES, NOW).actions == (Start("big", ("one", "two")),)
    running = slots(on(("one", "two"), ready("big", 0.8, in_flight=1)), stopped("d", 0.3))
    refused = decide(running, wait("d"), Policy(on_busy=OnBusy.REJECT, hosts=TWO_BOXES.hosts), NOW).actions
    assert [a.code for a in refused if isinstance(a, Refuse)] == ["model_busy"]  # big's share is on both


def test_a_model_whose_host_is_down_is_refused_and_the_others_go_to_the_host_that_is_up():
    policy = Policy(hosts=(HostBudget("one", 1.0), HostBudget("two", 1.0, up=False)))
    state = slots(stopped("named", 0.3, host="two"), on(TWO, stopped("free", 0.3)))
    plan = decide(state, wait("named", "free"), policy, NOW)
    refusal = next(a for a in plan.actions if isinstance(a, Refuse))
    assert (refusal.status, refusal.code) == (503, "host_unavailable")
    assert "host 'two' is down" in refusal.message
    assert Start("free", ONE) in plan.actions


def test_keep_warm_models_come_back_on_a_host_with_room():
    state = slots(on(ONE, ready("a", 0.9)), stopped("warm", 0.5, keep_warm=True))
    assert decide(state, (), TWO_BOXES, NOW).actions == (Start("warm", TWO),)
