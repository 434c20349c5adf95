"""What a model that is not ready yet is doing, in figures and in one line of text (pure).

One source for everyone who shows it: the loading feedback in a client's stream and the dashboard
(through the admin API) both show `Progress.text`, made here from the scheduler's state, the image
pull and the engine's own log. No I/O and no clock: the caller passes what is and the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from waker.config.schema import OnBusy
from waker.config.units import format_bytes
from waker.core.engine_log import EngineStage
from waker.core.image_pull import PullProgress
from waker.core.lifecycle import State
from waker.core.placement import Unplaceable
from waker.core.scheduler import (
    OCCUPYING,
    Policy,
    Slot,
    Waiter,
    fits_on,
    holders_of,
    occupying_on,
    release_estimate,
    where,
)

MIN_GAP = 1.0  # seconds between two lines whose headline moved within one phase (shard %, pull layers)
HEARTBEAT = 5.0  # seconds without a line before the same headline goes again, with fresh figures


class Phase(StrEnum):
    QUEUED = "queued"  # waiting for its turn or for room on the GPU
    PULLING = "pulling"  # its image is being pulled
    LOADING = "loading"  # its container runs; the engine loads
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"  # nothing asks for it


@dataclass(frozen=True, slots=True)
class Progress:
    model: str
    phase: Phase
    step: str  # where in its phase: the engine's step ("weights"), "pull", "queued"...; a new one is news
    headline: str  # what it is doing, with the step's own figures (a shard, a layer)
    detail: str  # figures that move all the time (time waited, bytes pulled)
    elapsed_seconds: float | None = None  # in this phase: queued for, or starting for
    expected_seconds: float | None = None  # its last start took this long
    queue_position: int | None = None  # 1 = next to start, among the models waiting for room
    queue_length: int | None = None
    percent: int | None = None  # of the engine's current step, when it reports one

    @property
    def text(self) -> str:
        """The one line people see."""
        return f"{self.headline} · {self.detail}" if self.detail else self.headline


def progress(
    model_id: str,
    slots: dict[str, Slot],
    queue: tuple[Waiter, ...],
    policy: Policy,
    pull: PullProgress | None,
    stage: EngineStage | None,
    now: float,
) -> Progress:
    """Where `model_id` stands, from the slots (activity merged in), the waiting requests, its
    image pull (if one runs) and the engine's latest stage (if its log showed one)."""
    slot = slots[model_id]
    expected = slot.expected_start_seconds
    if slot.state is State.STARTING:
        elapsed = now - slot.starting_since
        timing = _timing(elapsed, expected)
        if pull is not None:
            sizes = f"{format_bytes(pull.bytes_done)} of {format_bytes(pull.bytes_total)}, " if pull.bytes_total else ""
            return Progress(
                model_id,
                Phase.PULLING,
                "pull",
                f"pulling image {pull.image}: {pull.layers_done}/{pull.layers_total} layers",
                sizes + timing,
                elapsed,
                expected,
            )
        headline = f"loading {model_id}: {stage.text}" if stage else f"starting {model_id}'s container"
        step = stage.step.name.lower() if stage else "container"
        return Progress(
            model_id, Phase.LOADING, step, headline, timing, elapsed, expected, percent=stage.percent if stage else None
        )
    if slot.state is State.READY:
        took = f" (started in {expected:.1f} s)" if expected else ""
        return Progress(model_id, Phase.READY, "ready", f"{model_id} is ready{took}", "", expected_seconds=expected)
    waiting = [w for w in queue if w.model == model_id]
    if not waiting:
        phase = Phase.FAILED if slot.state is State.FAILED else Phase.STOPPED
        return Progress(
            model_id, phase, phase.value, f"{model_id} is {slot.state.value}", "", expected_seconds=expected
        )
    return _queued(slot, slots, queue, policy, now, min(w.since for w in waiting))


def _timing(elapsed: float, expected: float | None) -> str:
    if expected is None:
        return f"{elapsed:.0f} s so far (its first start: no earlier one to compare with)"
    return f"{elapsed:.0f} s of ~{expected:.0f} s (its last start)"


def _queued(
    slot: Slot, slots: dict[str, Slot], queue: tuple[Waiter, ...], policy: Policy, now: float, since: float
) -> Progress:
    """A model with requests waiting and no start under way: its place and what it waits for."""
    order: list[str] = []  # models waiting for a start, by their oldest request (the scheduler's order)
    for waiter in sorted(queue, key=lambda w: w.since):
        if waiter.model not in order and slots[waiter.model].state not in (State.READY, State.STARTING):
            order.append(waiter.model)
    position = order.index(slot.id) + 1
    placed = where(slot, slots, policy)  # with several hosts, what matters is the host it goes to
    hosts = () if isinstance(placed, Unplaceable) else placed
    occupying = occupying_on(slots, hosts, policy) if hosts else [s for s in slots.values() if s.state in OCCUPYING]
    waited = now - since
    bound = f" of at most {policy.queue_timeout:.0f} s" if policy.on_busy is OnBusy.QUEUE else ""
    detail = f"waited {waited:.0f} s{bound}"
    reason = (
        f"it cannot be placed: {placed.reason}"
        if isinstance(placed, Unplaceable)
        else _waits_for(slot, order, occupying, fits_on(slot, hosts, slots, policy), now)
    )
    headline = f"queued for {slot.id} (#{position} of {len(order)}): {reason}"
    return Progress(
        slot.id, Phase.QUEUED, "queued", headline, detail, waited, slot.expected_start_seconds, position, len(order)
    )


def _waits_for(slot: Slot, order: list[str], occupying: list[Slot], fits_now: bool, now: float) -> str:
    if slot.state is State.STOPPING:
        return "its previous run is stopping"
    starting = [s for s in occupying if s.state is State.STARTING]
    if starting:
        other = starting[0]
        left = release_estimate(other, now)
        return f"{other.id!r} is starting (one start at a time; ~{left} s left)"
    if order.index(slot.id) > 0:
        return f"{order[0]!r} goes first"
    stopping = [s.id for s in occupying if s.state is State.STOPPING]
    if stopping:
        return f"{', '.join(repr(m) for m in stopping)} stopping to make room"
    if fits_now:
        return "starting now"
    holders = holders_of(slot, occupying, now)
    if not holders:
        return "room being made on the GPU"
    return "room on the GPU, held by " + "; ".join(
        f"{h.model!r} ({h.state}, {h.in_flight} request(s) in flight"
        + (
            f", release expected in ~{h.expected_release_seconds} s)"
            if h.expected_release_seconds is not None
            else ", no release expected)"
        )
        for h in holders
    )


def should_send(last: Progress | None, last_sent_at: float, current: Progress, now: float) -> bool:
    """Whether a stream sends `current` now, having sent `last` at `last_sent_at`: at once when the
    phase or the step changes, within MIN_GAP when only the headline moved (a shard, a layer), and
    every HEARTBEAT with fresh figures when nothing did, so that clients and proxies see it is alive."""
    if last is None or current.phase is not last.phase or current.step != last.step:
        return True
    gap = now - last_sent_at
    if current.headline != last.headline:
        return gap >= MIN_GAP
    return gap >= HEARTBEAT


def ready_line(model_id: str, waited: float) -> str:
    """The last line before the model's own answer."""
    return f"{model_id} is ready after {waited:.1f} s; its answer follows"
