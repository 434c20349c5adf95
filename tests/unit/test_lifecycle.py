import itertools
import re
from pathlib import Path

import pytest

from waker.core.lifecycle import Event, State, next_state
from waker.errors import IllegalTransition

S, E = State, Event
# The specification, written out independently of the table in waker/core/lifecycle.py: every transition a
# model may make. Anything else must be refused.
EXPECTED = {
    (S.STOPPED, E.START): S.STARTING,
    (S.FAILED, E.START): S.STARTING,
    (S.STARTING, E.READY): S.READY,
    (S.STARTING, E.FAIL): S.FAILED,
    (S.STARTING, E.CALL_OFF): S.STOPPED,
    (S.READY, E.FAIL): S.FAILED,
    (S.READY, E.EXITED): S.STOPPED,
    (S.READY, E.STOP): S.STOPPING,
    (S.STOPPING, E.STOPPED): S.STOPPED,
    (S.STOPPING, E.RESUME): S.READY,
    (S.FAILED, E.RESET): S.STOPPED,
    # Sleep mode
    (S.READY, E.SLEEP): S.FALLING_ASLEEP,
    (S.FALLING_ASLEEP, E.ASLEEP): S.SLEEPING,
    (S.FALLING_ASLEEP, E.RESUME): S.READY,
    (S.FALLING_ASLEEP, E.STOP): S.STOPPING,
    (S.FALLING_ASLEEP, E.FAIL): S.FAILED,
    (S.SLEEPING, E.WAKE): S.WAKING,
    (S.SLEEPING, E.STOP): S.STOPPING,
    (S.SLEEPING, E.FAIL): S.FAILED,
    (S.SLEEPING, E.EXITED): S.STOPPED,
    (S.WAKING, E.READY): S.READY,
    (S.WAKING, E.STOP): S.STOPPING,
    (S.WAKING, E.FAIL): S.FAILED,
}
WAKER = Path(__file__).parents[2] / "waker"


@pytest.mark.parametrize("state, event", list(itertools.product(State, Event)))
def test_each_pair_does_what_the_specification_says(state, event):
    if (state, event) in EXPECTED:
        assert next_state(state, event) is EXPECTED[(state, event)]
    else:
        with pytest.raises(IllegalTransition, match=f"{event.value!r} is not allowed in state {state.value!r}"):
            next_state(state, event)


def _reachable(start: State) -> set[State]:
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for event in Event:
            try:
                target = next_state(state, event)
            except IllegalTransition:
                continue
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_state_is_reachable_and_every_state_can_get_back_to_stopped():
    assert _reachable(State.STOPPED) == set(State)
    for state in State:
        assert State.STOPPED in _reachable(state), f"{state.value} is a dead end"


def test_every_event_is_triggered_by_the_shell():
    """A transition nothing triggers is dead code that hides what really happens."""
    source = "\n".join(p.read_text() for p in WAKER.rglob("*.py") if p.name != "lifecycle.py")
    used = set(re.findall(r"\bEvent\.([A-Z_]+)\b", source))
    assert {e.name for e in Event} - used == set()


def test_sleep_and_wake_round_trip():
    state = State.READY
    for event, expected in [
        (Event.SLEEP, State.FALLING_ASLEEP),
        (Event.ASLEEP, State.SLEEPING),
        (Event.WAKE, State.WAKING),
        (Event.READY, State.READY),
    ]:
        state = next_state(state, event)
        assert state is expected


def test_a_failed_wake_or_a_long_sleep_stops_the_container_and_a_busy_model_is_not_put_to_sleep():
    assert next_state(State.WAKING, Event.STOP) is State.STOPPING  # then a cold start
    assert next_state(State.SLEEPING, Event.STOP) is State.STOPPING  # sleep_timeout, or room
    assert next_state(State.FALLING_ASLEEP, Event.RESUME) is State.READY  # a request came first
    assert next_state(State.WAKING, Event.FAIL) is State.FAILED  # the engine died waking: a failed run


@pytest.mark.parametrize(
    "state, event",
    [
        (State.SLEEPING, Event.READY),
        (State.STOPPED, Event.WAKE),
        (State.STARTING, Event.SLEEP),
        (State.SLEEPING, Event.SLEEP),
        (State.WAKING, Event.SLEEP),
    ],
)
def test_sleep_nonsense_is_refused(state, event):
    with pytest.raises(IllegalTransition, match=event.value):
        next_state(state, event)
