"""Each model's lifecycle as a pure state machine: no I/O, no clock; the caller passes `now`.

    stopped ──start──► starting ──ready──► ready ──stop──► stopping ──stopped──► stopped
                          │                  │
                          └─fail─► failed    └─exited─► stopped
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class Event(StrEnum):
    START = "start"
    READY = "ready"
    FAIL = "fail"
    EXITED = "exited"
    STOP = "stop"
    STOPPED = "stopped"


_NEXT: dict[tuple[State, Event], State] = {
    (State.STOPPED, Event.START): State.STARTING,
    (State.FAILED, Event.START): State.STARTING,
    # nginx asks for a start when it cannot reach a model the waker thought ready: it died unseen.
    (State.READY, Event.START): State.STARTING,
    (State.STARTING, Event.READY): State.READY,
    (State.STARTING, Event.FAIL): State.FAILED,
    (State.READY, Event.EXITED): State.STOPPED,
    (State.STARTING, Event.STOP): State.STOPPING,
    (State.READY, Event.STOP): State.STOPPING,
    (State.FAILED, Event.STOP): State.STOPPING,
    (State.STOPPING, Event.STOPPED): State.STOPPED,
    (State.STOPPING, Event.EXITED): State.STOPPED,
}


class IllegalTransition(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ModelStatus:
    state: State = State.STOPPED
    since: float = 0.0
    container_id: str = ""
    last_error: str = ""
    ready_at: float | None = None


def apply(status: ModelStatus, event: Event, now: float, *, container_id: str = "", error: str = "") -> ModelStatus:
    """The status after `event`; raises IllegalTransition for an event the state does not accept."""
    target = _NEXT.get((status.state, event))
    if target is None:
        raise IllegalTransition(f"event {event.value!r} is not allowed in state {status.state.value!r}")
    return replace(
        status,
        state=target,
        since=now,
        container_id=container_id or status.container_id,
        last_error=error if event is Event.FAIL else ("" if target is State.READY else status.last_error),
        ready_at=now if target is State.READY else None,
    )


def allowed(state: State, event: Event) -> bool:
    return (state, event) in _NEXT
