"""Placement across hosts (issue 17), a pure function: which host a model starts on."""

import pytest

from waker.core.placement import HostView, Need, Placement, Unplaceable, place

ONE = HostView("spark1", capacity=1.0)
TWO = HostView("spark2", capacity=1.0)


def test_a_named_host_is_where_the_model_goes_even_when_another_is_emptier():
    busy = HostView("spark1", 1.0, used=0.8, running=1)
    assert place(Need(0.5, host="spark1"), (busy, TWO)) == Placement(("spark1",), evicts=True)


def test_a_free_host_wins_over_one_that_must_evict():
    full = HostView("spark1", 1.0, used=0.8, running=1, last_ran_here=True)
    assert place(Need(0.5), (full, TWO)) == Placement(("spark2",), evicts=False)


def test_where_it_last_ran_wins_among_hosts_where_it_fits():
    cached = HostView("spark2", 1.0, used=0.3, running=1, last_ran_here=True)
    assert place(Need(0.5), (ONE, cached)).hosts == ("spark2",)


def test_then_the_emptier_host_then_the_declaration_order():
    fuller = HostView("spark1", 1.0, used=0.4, running=1)
    assert place(Need(0.5), (fuller, TWO)).hosts == ("spark2",)
    assert place(Need(0.5), (ONE, TWO)).hosts == ("spark1",)


def test_exclusive_models_go_to_an_empty_host_and_keep_others_away():
    holder = HostView("spark1", 1.0, used=0.1, running=1)
    assert place(Need(0.2, exclusive=True), (holder, TWO)).hosts == ("spark2",)
    taken = HostView("spark2", 1.0, used=0.2, running=1, exclusive_running=True)
    assert place(Need(0.1), (ONE, taken)).hosts == ("spark1",)


def test_when_nothing_fits_now_the_best_host_makes_room():
    a = HostView("spark1", 1.0, used=0.9, running=2)
    b = HostView("spark2", 1.0, used=0.7, running=1, last_ran_here=True)
    assert place(Need(0.5), (a, b)) == Placement(("spark2",), evicts=True)


def test_a_host_that_is_down_is_never_chosen():
    assert place(Need(0.5), (HostView("spark1", 1.0, up=False), TWO)).hosts == ("spark2",)


def test_a_model_spread_over_two_hosts_gets_its_named_head_and_the_other():
    placement = place(Need(0.8, hosts=2, host="spark2"), (ONE, TWO))
    assert placement == Placement(("spark2", "spark1"), evicts=False) and placement.head == "spark2"


def test_a_two_host_model_evicts_where_either_side_lacks_room():
    assert place(Need(0.8, hosts=2), (HostView("spark1", 1.0, used=0.5, running=1), TWO)).evicts


@pytest.mark.parametrize(
    ("need", "hosts", "reason"),
    [
        (Need(0.5, host="spark3"), (ONE, TWO), "host 'spark3' is not declared"),
        (Need(0.5, host="spark2"), (ONE, HostView("spark2", 1.0, up=False)), "host 'spark2' is down"),
        (
            Need(0.8, hosts=2),
            (ONE, HostView("spark2", 1.0, up=False)),
            "the model needs 2 hosts and 1 can take it now; down: spark2",
        ),
        (Need(0.8), (HostView("spark1", 0.5), HostView("spark2", 0.5)), "needs 1 host and 0 can take it now"),
        (Need(0.8, host="spark1"), (HostView("spark1", 0.5), TWO), "more than host 'spark1' can hold (0.5)"),
    ],
)
def test_what_cannot_be_placed_says_why(need, hosts, reason):
    result = place(need, hosts)
    assert isinstance(result, Unplaceable) and reason in result.reason, result
