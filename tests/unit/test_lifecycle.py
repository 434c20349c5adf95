import itertools

import pytest

from waker.lifecycle import Event, IllegalTransition, State, allowed, next_state


def test_happy_path_through_every_state():
    state = State.STOPPED
    for event, expected in [(Event.START, State.STARTING), (Event.READY, State.READY),
                            (Event.STOP, State.STOPPING), (Event.STOPPED, State.STOPPED)]:
        state = next_state(state, event)
        assert state is expected


def test_failure_and_retry():
    assert next_state(State.STARTING, Event.FAIL) is State.FAILED
    assert next_state(State.FAILED, Event.START) is State.STARTING


def test_a_ready_model_that_died_is_stopped_or_failed_and_an_idle_stop_can_be_called_off():
    assert next_state(State.READY, Event.EXITED) is State.STOPPED  # a clean exit
    assert next_state(State.READY, Event.FAIL) is State.FAILED  # a crash while serving
    assert next_state(State.STOPPING, Event.RESUME) is State.READY


@pytest.mark.parametrize("state, event", [(State.READY, Event.START), (State.STARTING, Event.STOP),
                                          (State.STOPPED, Event.READY), (State.STOPPING, Event.START)])
def test_nonsense_is_refused(state, event):
    with pytest.raises(IllegalTransition, match=event.value):
        next_state(state, event)


@pytest.mark.parametrize("state, event", list(itertools.product(State, Event)))
def test_every_pair_is_either_a_transition_or_refused(state, event):
    if allowed(state, event):
        assert isinstance(next_state(state, event), State)
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, event)
