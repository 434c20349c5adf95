import itertools

import pytest

from waker.lifecycle import Event, IllegalTransition, ModelStatus, State, allowed, apply

HAPPY_PATH = [
    (Event.START, State.STARTING), (Event.READY, State.READY), (Event.STOP, State.STOPPING),
    (Event.STOPPED, State.STOPPED),
]


def test_happy_path_through_every_state():
    status = ModelStatus()
    for now, (event, state) in enumerate(HAPPY_PATH, start=1):
        status = apply(status, event, float(now), container_id="c1")
        assert status.state is state and status.since == now
    assert status.container_id == "c1"


def test_failure_keeps_the_reason_until_the_model_is_ready_again():
    status = apply(ModelStatus(), Event.START, 1.0)
    status = apply(status, Event.FAIL, 2.0, error="exited with code 3")
    assert status.state is State.FAILED and status.last_error == "exited with code 3"
    status = apply(status, Event.START, 3.0)
    assert status.last_error == "exited with code 3"
    status = apply(status, Event.READY, 4.0)
    assert status.last_error == "" and status.ready_at == 4.0


def test_a_ready_model_that_vanished_can_be_started_again():
    status = apply(apply(ModelStatus(), Event.START, 1), Event.READY, 2)
    assert apply(status, Event.START, 3).state is State.STARTING
    assert apply(status, Event.EXITED, 3).state is State.STOPPED


@pytest.mark.parametrize("state, event", list(itertools.product(State, Event)))
def test_every_pair_is_either_a_transition_or_refused(state, event):
    status = ModelStatus(state=state)
    if allowed(state, event):
        assert isinstance(apply(status, event, 1.0).state, State)
    else:
        with pytest.raises(IllegalTransition, match=event.value):
            apply(status, event, 1.0)
