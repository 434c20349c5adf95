"""Each model's lifecycle as a pure state machine.

    stopped ──start──► starting ──ready──► ready ──stop──► stopping ──stopped──► stopped
                          │                  │  ▲             │
                          └─fail─► failed ◄──┤  └──resume─────┘ (an idle stop called off: it was busy)
                                     │       │ fail: it exited on its own while serving (a crash)
                                     │       └─exited─► stopped (its container is gone, found on a resync)
                                     └─reset─► stopped (cleared by hand)
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class StopReason(StrEnum):
    """Why a model was stopped: the `reason` of its stop event and its metrics label."""

    IDLE = "idle"
    EVICTED = "evicted"  # for another model that needed the room
    MANUAL = "manual"  # `waker stop`, the admin API or an unload
    CLIENT = "client"  # a client's unload on the client port
    UNREACHABLE = "unreachable"  # believed ready, but its health check failed
    REMOVED = "removed"  # a reload took it out of the config


class Event(StrEnum):
    START = "start"
    READY = "ready"
    FAIL = "fail"
    EXITED = "exited"
    STOP = "stop"
    STOPPED = "stopped"
    RESUME = "resume"
    RESET = "reset"


_NEXT: dict[tuple[State, Event], State] = {
    (State.STOPPED, Event.START): State.STARTING,
    (State.FAILED, Event.START): State.STARTING,
    (State.STARTING, Event.READY): State.READY,
    (State.STARTING, Event.FAIL): State.FAILED,
    (State.READY, Event.EXITED): State.STOPPED,
    # An exit while serving that the waker did not ask for is a failed run, like a failed start: it
    # counts towards the back-off, so an engine that dies on its first request is not restarted for
    # every request forever.
    (State.READY, Event.FAIL): State.FAILED,
    (State.READY, Event.STOP): State.STOPPING,
    (State.STOPPING, Event.STOPPED): State.STOPPED,
    (State.STOPPING, Event.RESUME): State.READY,
    # An operator clears a failure (and its back-off) by stopping the model.
    (State.FAILED, Event.RESET): State.STOPPED,
}


class IllegalTransition(ValueError):
    pass


def next_state(state: State, event: Event) -> State:
    """The state after `event`; raises IllegalTransition for an event the state does not accept."""
    target = _NEXT.get((state, event))
    if target is None:
        raise IllegalTransition(f"event {event.value!r} is not allowed in state {state.value!r}")
    return target

