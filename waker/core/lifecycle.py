"""Each model's lifecycle as a pure state machine.

    stopped ──start──► starting ──ready──► ready ──stop──► stopping ──stopped──► stopped
       ▲                  │                  │  ▲             │
       └───call_off───────┤                  │  │             │  (a `block` workload runs: held off
                          │                  │  │             │   before any container)
                          └─fail─► failed ◄──┤  └──resume─────┘ (an idle stop called off: it was busy)
                                     │       │ fail: it exited on its own while serving (a crash)
                                     │       └─exited─► stopped (its container is gone, found on a resync)
                                     └─reset─► stopped (cleared by hand)

Sleep mode (models with `sleep = 1 | 2`): the process stays, the GPU memory goes.

    ready ──sleep──► falling_asleep ──asleep──► sleeping ──wake──► waking ──ready──► ready
                        │  └──resume──► ready       │                 │
                        │                           ├─stop─► stopping ◄┘ stop: the wake failed, hung or was wrong
                        └─stop─► stopping           └─exited─► stopped     (then a cold start)

falling_asleep and waking hold the model's whole `gpu_memory` (the engine has not yet given it back,
or is taking it again); sleeping holds `sleep_memory`. A crash in any of the three is a failed run.
"""

from __future__ import annotations

from enum import StrEnum

from waker.errors import IllegalTransition


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    FALLING_ASLEEP = "falling_asleep"  # asked to sleep; its memory is not free until it is asleep
    SLEEPING = "sleeping"
    WAKING = "waking"  # waking, then checked: asleep no more, and a one-token completion answered


class StopReason(StrEnum):
    """Why a model was stopped: the `reason` of its stop event and its metrics label."""

    IDLE = "idle"
    EVICTED = "evicted"  # for another model that needed the room
    MANUAL = "manual"  # `waker stop`, the admin API or an unload
    CLIENT = "client"  # a client's unload on the client port
    UNREACHABLE = "unreachable"  # believed ready, but its health check failed
    REMOVED = "removed"  # a reload took it out of the config
    SLEEP_TIMEOUT = "sleep_timeout"  # asleep for its sleep_timeout
    SLEEP_FAILED = "sleep_failed"  # the engine refused or did not finish falling asleep
    WAKE_FAILED = "wake_failed"  # its wake failed, hung past wake_timeout or left it not serving


class SleepReason(StrEnum):
    """Why a model was put to sleep."""

    IDLE = "idle"  # idle for idle_timeout
    ROOM = "room"  # another model needed the room (the Sleep action's `for_model`)
    MANUAL = "manual"  # the admin API or `waker sleep`


class Event(StrEnum):
    START = "start"
    READY = "ready"
    FAIL = "fail"
    EXITED = "exited"
    STOP = "stop"
    STOPPED = "stopped"
    RESUME = "resume"
    RESET = "reset"
    SLEEP = "sleep"
    ASLEEP = "asleep"
    WAKE = "wake"
    CALL_OFF = "call_off"


_NEXT: dict[tuple[State, Event], State] = {
    (State.STOPPED, Event.START): State.STARTING,
    (State.FAILED, Event.START): State.STARTING,
    (State.STARTING, Event.READY): State.READY,
    (State.STARTING, Event.FAIL): State.FAILED,
    # A start that finds a `block` workload running ([[external]]) before it made anything: not a
    # failed run, the model is down as before.
    (State.STARTING, Event.CALL_OFF): State.STOPPED,
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
    # Sleep mode. Only an idle model is put to sleep: vLLM aborts the requests in flight (mode=abort)
    # and on GPUs sleeping under load has crashed the engine, so a request that arrived before the
    # sleep call calls it off (resume), as it calls off an idle stop.
    (State.READY, Event.SLEEP): State.FALLING_ASLEEP,
    (State.FALLING_ASLEEP, Event.RESUME): State.READY,
    (State.FALLING_ASLEEP, Event.ASLEEP): State.SLEEPING,
    (State.FALLING_ASLEEP, Event.STOP): State.STOPPING,  # the sleep call failed: stop it instead
    (State.FALLING_ASLEEP, Event.FAIL): State.FAILED,
    (State.SLEEPING, Event.WAKE): State.WAKING,
    (State.SLEEPING, Event.STOP): State.STOPPING,  # asleep past sleep_timeout, or its room is needed
    (State.SLEEPING, Event.FAIL): State.FAILED,
    (State.SLEEPING, Event.EXITED): State.STOPPED,
    (State.WAKING, Event.READY): State.READY,
    # A wake that failed, hung past wake_timeout or left an engine that does not serve: the container
    # is stopped and the waiting requests get a cold start.
    (State.WAKING, Event.STOP): State.STOPPING,
    (State.WAKING, Event.FAIL): State.FAILED,
}


def next_state(state: State, event: Event) -> State:
    """The state after `event`; raises IllegalTransition for an event the state does not accept."""
    target = _NEXT.get((state, event))
    if target is None:
        raise IllegalTransition(f"event {event.value!r} is not allowed in state {state.value!r}")
    return target
