"""What happens to models outside the scheduler's plan, as pure functions beside `scheduler.decide`: a run
that failed (a start, or a crash while serving), a container that died or was started by hand, a host
whose engine went away or was listed again, a sleep or a wake that failed. Each takes the slots (and the
policy, the time) and returns the new slots and what the shell must do; the supervisor, the only
writer of model state, applies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from waker.core.lifecycle import Event, State
from waker.core.plan import Policy, Slot
from waker.core.scheduler import hosts_of

GATED = (State.FALLING_ASLEEP, State.SLEEPING, State.WAKING)  # sleep mode: nginx sends requests to the waker


@dataclass(frozen=True, slots=True)
class Failure:
    slot: Slot  # failed, counted towards the back-off
    backoff: bool  # this failure put the model in its back-off
    answer_waiters: bool  # its waiters get the error (not after a crash while waking: they get a cold start)


def failed_run(slot: Slot, message: str, policy: Policy, now: float) -> Failure:
    """A run that failed: its start failed, or it crashed while serving (or asleep, or waking). Counts
    towards the back-off: an engine that dies on its first request is not restarted for every request
    forever. A crash while waking also counts as a failed wake."""
    failures = slot.failures + 1
    backoff = failures >= policy.max_start_failures
    failed = replace(
        slot.moved(Event.FAIL, now),
        failures=failures,
        retry_at=now + policy.start_backoff if backoff else 0.0,
        last_error=message,
        wake_failures=slot.wake_failures + (1 if slot.state is State.WAKING else 0),
    )
    return Failure(failed, backoff, answer_waiters=slot.state is not State.WAKING)


@dataclass(frozen=True, slots=True)
class Crash:
    """A model that died while it served (or slept, or woke)."""

    failure: Failure
    tear_down: bool  # it ran over two hosts: the other half cannot serve alone


def died(slot: Slot, exit_code: str, host: str, several: bool, policy: Policy, now: float) -> Crash | None:
    """Its container on `host` exited. A death while starting is the start's to report (None, and the
    start is told); a death elsewhere than where it runs is an old container's (None)."""
    if host not in hosts_of(slot, policy) or not (slot.state is State.READY or slot.state in GATED):
        return None
    # Unasked-for, whatever the code: vLLM exits 0 after its engine core died.
    doing = "serving" if slot.state is State.READY else slot.state.value.replace("_", " ")
    message = f"model {slot.id!r} exited with code {exit_code} while {doing}"
    if several:
        message += f" on host '{host}'"
    return Crash(failed_run(slot, message, policy, now), tear_down=len(hosts_of(slot, policy)) > 1)


def dying_start(slot: Slot, host: str, policy: Policy) -> bool:
    """Its container on `host` exited while it starts: the start must stop waiting for its health."""
    return slot.state is State.STARTING and host in hosts_of(slot, policy)


def adopts(slot: Slot, ray_worker: bool) -> bool:
    """A container of the model started while the waker runs none (by hand, or found on a listing): it is
    adopted. A Ray worker is never its model: its head is."""
    return slot.state in (State.STOPPED, State.FAILED) and not ray_worker


def adopted_hosts(slot: Slot, host: str, host_names: tuple[str, ...]) -> tuple[str, ...]:
    """Where a container found running on `host` serves from: there; a model over two hosts has its head
    there and its worker on the other host."""
    if slot.host_count < 2:
        return (host,)
    return (host, next(name for name in host_names if name != host))


def lost(slots: Mapping[str, Slot], host: str, policy: Policy, now: float) -> dict[str, Slot]:
    """A host's engine went away: the models running there (ready or asleep) are marked stopped, so that
    the scheduler places them again (another host, or this one once it is back)."""
    return {
        model_id: slot.moved(Event.EXITED, now)
        for model_id, slot in slots.items()
        if slot.state in (State.READY, State.SLEEPING) and host in hosts_of(slot, policy)
    }


@dataclass(frozen=True, slots=True)
class Resync:
    """What a listing of a host's running containers changes."""

    adopt: dict[str, tuple[str, tuple[str, ...]]]  # model -> (container, hosts), found running while stopped
    gone: dict[str, Slot]  # believed running with their head there, their container gone: stopped
    strays: dict[str, str]  # model -> container: a copy there while the model runs elsewhere, to be stopped


def resync(
    slots: Mapping[str, Slot],
    running: Mapping[str, str],
    host: str,
    host_names: tuple[str, ...],
    policy: Policy,
    now: float,
) -> Resync:
    """Rebuilds what runs on `host` from its listing: running containers are adopted (never restarted);
    models believed running there whose container is gone are stopped; a copy of a model that runs on
    another host (it ran here when this host went away) would hold the GPU unseen, and is stopped."""
    adopt, gone, strays = {}, {}, {}
    for model_id, slot in slots.items():
        where = hosts_of(slot, policy)
        if model_id in running and adopts(slot, ray_worker=False):
            adopt[model_id] = (running[model_id], adopted_hosts(slot, host, host_names))
        elif model_id not in running and where[0] == host and slot.state in (State.READY, State.SLEEPING):
            gone[model_id] = slot.moved(Event.EXITED, now)
        elif model_id in running and host not in where:
            strays[model_id] = running[model_id]
    return Resync(adopt, gone, strays)


MAX_UNANSWERED_CHECKS = 3


class IdleCheck(StrEnum):
    """What an idle stop's (or sleep's) last look at the engine and nginx says."""

    IDLE = "idle"  # nothing in flight, as far as they tell: go on
    BUSY = "busy"  # the engine or nginx has requests in flight: call it off
    CHECK_AGAIN = "check_again"  # the engine did not answer: look again after a pause


def idle_check(server_requests: int | None, answered: bool, in_flight: int, unanswered_before: int) -> IdleCheck:
    """`server_requests` is what the engine reports running or waiting (None: it does not report it),
    `answered` whether it answered at all, `in_flight` what nginx passed it. An engine that does not
    answer is not idle for that: its API server stalls while the engine works (up to 14 s measured on a
    loaded CPU), so it is asked again; after MAX_UNANSWERED_CHECKS unanswered checks in a row it counts
    as idle, so that a wedged engine does not hold the GPU forever."""
    if server_requests or in_flight:
        return IdleCheck.BUSY
    if not answered and unanswered_before + 1 < MAX_UNANSWERED_CHECKS:
        return IdleCheck.CHECK_AGAIN
    return IdleCheck.IDLE


def wake_failed(slot: Slot, now: float) -> Slot:
    """A wake that failed, hung or left an engine that does not serve: the model is stopped (its waiters
    stay queued and get a cold start), and the failure counts: after `max_wake_failures` in a row the
    scheduler stops rather than puts it to sleep."""
    return replace(slot.moved(Event.STOP, now), wake_failures=slot.wake_failures + 1)
