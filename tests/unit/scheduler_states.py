"""What `scheduler.decide` takes, drawn by Hypothesis: `scheduler_states()` gives a `SchedulerState` (the
models' slots, the queue of waiters, the policy and the time) for test_scheduler_properties.py.

What it covers, a superset of the three seed loops it replaced (plain, sleep mode, two hosts):
- 1 to 6 models in any of the eight states, several of them starting or waking on one host at times
  (the shell adopts every container it finds running on a resync).
- Each model's configuration: gpu_memory 0 (no GPU), 0.1, 0.3, 0.5, 0.8 or 1.0; exclusive, keep_warm,
  pinned and suspended in any combination; idle_timeout 0 (never), 30 or 600 s; min_uptime 0 or 30 s;
  sleep level 0 (never sleeps), 1 or 2 (always 1 or 2 when falling asleep, asleep or waking), holding
  none, a tenth or all of its gpu_memory asleep, sleep_timeout 0 (never), 60 or 3600 s.
- What happened to it, where its state has it (`decide` reads none of it in the other states):
  ready with 0, 1 or 3 requests in flight (the oldest up to 900 s old, the mean duration known or
  not), its last request ended and it became ready up to 900 s ago, 0 to 2 failed wakes; asleep or
  waking since up to 5000 s, asleep after a last request up to 900 s ago; starting for up to 60 s, its
  last start's duration known or not; failed 0, 1 or 3 times, with no back-off or a retry time up to
  60 s either side of now.
- Hosts: one (the implicit host, capacity 1.0 or 0.5; a model knows it ran there or not), or two
  named hosts, each with capacity 1.0 or 0.5, up or down (models may still be listed on a down one).
  There a model runs on one host or over both (head first, either way round), may name its (head's)
  host, and remembers where it last ran or not (a model occupying a host always knows).
- 0 to 5 waiters, each for any of the models, waiting for up to 700 s (queue_timeout is 600 s), in
  any order; on_busy queue or reject; max_wake_failures 1 or 2; now from 1000 s to 10^7 s.

Every choice lists its simplest value first, so that a failing state shrinks towards few stopped
models without GPU memory, flags or history, on one host, with few waiters, at now = 1000.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace

from hypothesis import strategies as st

from waker.config.hosts import IMPLICIT_HOST
from waker.config.schema import OnBusy
from waker.core.lifecycle import State
from waker.core.plan import HostBudget, Policy, Slot, Waiter

HOST_NAMES = ("one", "two")
# Everything but stopped and failed holds GPU memory (falling asleep and waking, all of it).
OCCUPYING = frozenset(State) - {State.STOPPED, State.FAILED}
SLEEP_STATES = (State.FALLING_ASLEEP, State.SLEEPING, State.WAKING)
QUEUE_TIMEOUT = 600.0

_SLOT_DEFAULTS = Slot(id="")


def brief(slot: Slot) -> str:
    """`slot` with only the fields that differ from a new Slot's: a shrunk example leaves most of 27 alone."""
    changed = [
        f"{f.name}={getattr(slot, f.name)!r}"
        for f in fields(Slot)
        if f.name == "id" or getattr(slot, f.name) != getattr(_SLOT_DEFAULTS, f.name)
    ]
    return f"Slot({', '.join(changed)})"


@dataclass(frozen=True, slots=True)
class SchedulerState:
    slots: dict[str, Slot]
    queue: tuple[Waiter, ...]
    policy: Policy
    now: float

    def __repr__(self) -> str:
        lines = [
            f"now={self.now!r}",
            f"policy={self.policy!r}",
            *(f"  {brief(s)}" for s in self.slots.values()),
            *(f"  {w!r}" for w in self.queue),
        ]
        return "SchedulerState(\n" + "\n".join(lines) + "\n)"

    def _repr_pretty_(self, printer, cycle) -> None:  # how Hypothesis prints a falsifying example
        printer.text(repr(self))


def _weighted(weights: dict) -> st.SearchStrategy:
    """Each key `weight` times as often as a key of weight 1; the first key is what a failure shrinks to."""
    return st.sampled_from([value for value, weight in weights.items() for _ in range(weight)])


def _one_in(n: int) -> tuple[bool, ...]:
    return (False,) * (n - 1) + (True,)


# Built once: Hypothesis validates a strategy the first time it draws from it. The weights follow the
# seed loops: mostly stopped and ready models, few flags set, so that many plans start, stop or put to
# sleep something (with every state and flag equally likely, a third as many did: most states had a
# model coming up, holding back every start, or a pinned or exclusive one).
STATES = _weighted(
    {
        State.STOPPED: 4,
        State.READY: 4,
        State.SLEEPING: 2,
        State.STARTING: 1,
        State.WAKING: 1,
        State.STOPPING: 1,
        State.FALLING_ASLEEP: 1,
        State.FAILED: 2,
    }
)
GPU_MEMORY = st.sampled_from((0.0, 0.1, 0.3, 0.5, 0.8, 1.0))
# (exclusive, keep_warm, pinned, suspended), fewest set first: a shrunk example keeps the flags it needs.
FLAGS = st.sampled_from(sorted(itertools.product(_one_in(7), _one_in(5), _one_in(10), _one_in(5)), key=sum))
IDLE = st.sampled_from(tuple(itertools.product((0.0, 30.0, 600.0), (0.0, 30.0))))  # (idle_timeout, min_uptime)
# (sleep_level, share of gpu_memory held asleep, sleep_timeout); falling asleep, asleep or waking, it has a level.
SLEEP = {
    levels: st.sampled_from(tuple(itertools.product(levels, (0.0, 0.1, 1.0), (0.0, 60.0, 3600.0))))
    for levels in ((0, 1, 2), (1, 2))
}
IN_FLIGHT = _weighted({0: 2, 1: 1, 3: 1})
WAKE_FAILURES, FAILURES = st.sampled_from((0, 1, 2)), st.sampled_from((0, 1, 3))
RETRY_IN = st.none() | st.floats(-60.0, 60.0)  # None: no back-off (retry_at 0)
START_SECONDS, REQUEST_SECONDS = st.none() | st.floats(0.0, 300.0), st.none() | st.floats(0.0, 60.0)
# How long ago something happened.
MINUTE, QUARTER_HOUR, HOURS, WAITED = (st.floats(0.0, most) for most in (60.0, 900.0, 5000.0, QUEUE_TIMEOUT + 100.0))
ONE_HOST = st.sampled_from(((), (IMPLICIT_HOST,)))  # where it runs or last ran: not known, or there
# Where it runs or last ran, whether it remembers that when down, whether it names its (head's) host.
TWO_HOSTS = st.sampled_from(
    tuple(itertools.product((("one",), ("two",), ("one", "two"), ("two", "one")), (True, False), _one_in(3)))
)


@st.composite
def _model(draw: st.DrawFn, two_hosts: bool) -> tuple[Slot, dict[str, float]]:
    """A model's configuration always; what happened to it (times, requests, failures) where its state
    keeps it, the rest left at the defaults `decide` does not read in that state. Its times come apart,
    as seconds before now, so that this strategy is built once rather than for each `now`."""
    state = draw(STATES)
    gpu_memory = draw(GPU_MEMORY)
    exclusive, keep_warm, pinned, suspended = draw(FLAGS)
    idle_timeout, min_uptime = draw(IDLE)
    sleep_level, sleep_share, sleep_timeout = draw(SLEEP[(1, 2) if state in SLEEP_STATES else (0, 1, 2)])
    if two_hosts:
        placed, known, named = draw(TWO_HOSTS)
        hosts = placed if known or state in OCCUPYING else ()
        host, host_count = placed[0] if named else "", len(placed)
    else:
        hosts, host, host_count = draw(ONE_HOST), "", 1
    slot = Slot(
        id="",  # numbered once the list is drawn
        gpu_memory=gpu_memory,
        exclusive=exclusive,
        keep_warm=keep_warm,
        pinned=pinned,
        suspended=suspended,
        idle_timeout=idle_timeout,
        min_uptime=min_uptime,
        state=state,
        sleep_level=sleep_level,
        sleep_memory=gpu_memory * sleep_share,
        sleep_timeout=sleep_timeout,
        hosts=hosts,
        host=host,
        host_count=host_count,
    )
    if state is State.READY:
        in_flight = draw(IN_FLIGHT)
        ago = {"last_active": draw(QUARTER_HOUR), "ready_since": draw(QUARTER_HOUR)}
        if in_flight:
            ago["oldest_request_since"] = draw(QUARTER_HOUR)
            slot = replace(slot, mean_request_seconds=draw(REQUEST_SECONDS))
        return replace(slot, in_flight=in_flight, wake_failures=draw(WAKE_FAILURES)), ago
    if state is State.SLEEPING:
        return slot, {"since": draw(HOURS), "last_active": draw(QUARTER_HOUR)}
    if state is State.WAKING:
        return slot, {"since": draw(HOURS)}
    if state is State.STARTING:
        return replace(slot, expected_start_seconds=draw(START_SECONDS)), {"starting_since": draw(MINUTE)}
    if state is State.FAILED:
        retry_in = draw(RETRY_IN)
        return replace(slot, failures=draw(FAILURES)), {} if retry_in is None else {"retry_at": -retry_in}
    return slot, {}


# Lists rather than a count and a loop: shrinking then drops a model or a waiter whole.
MODELS = {two_hosts: st.lists(_model(two_hosts), min_size=1, max_size=6) for two_hosts in (False, True)}
MODEL_IDS = tuple(f"m{i}" for i in range(6))
QUEUES = {n: st.lists(st.tuples(st.sampled_from(MODEL_IDS[:n]), WAITED), max_size=5) for n in range(1, 7)}


CAPACITY = _weighted({1.0: 3, 0.5: 1})  # at 0.5, the larger models never fit
UP = _weighted({True: 4, False: 1})  # with both hosts down, nothing but refusals happens
ON_BUSY = st.sampled_from(tuple(OnBusy))
MAX_WAKE_FAILURES = st.sampled_from((2, 1))
NOW = st.floats(1000.0, 1e7)
TWO = st.booleans()


def _policy(draw: st.DrawFn) -> Policy:
    if draw(TWO):
        hosts = tuple(HostBudget(name, draw(CAPACITY), draw(UP)) for name in HOST_NAMES)
        return Policy(
            on_busy=draw(ON_BUSY), queue_timeout=QUEUE_TIMEOUT, max_wake_failures=draw(MAX_WAKE_FAILURES), hosts=hosts
        )
    return Policy(
        capacity=draw(CAPACITY),
        on_busy=draw(ON_BUSY),
        queue_timeout=QUEUE_TIMEOUT,
        max_wake_failures=draw(MAX_WAKE_FAILURES),
    )


@st.composite
def scheduler_states(draw: st.DrawFn) -> SchedulerState:
    now = draw(NOW)
    policy = _policy(draw)
    slots = {
        model_id: replace(slot, id=model_id, **{field: now - seconds for field, seconds in ago.items()})
        for model_id, (slot, ago) in zip(MODEL_IDS, draw(MODELS[bool(policy.hosts)]), strict=False)
    }
    waiters = draw(QUEUES[len(slots)])
    queue = tuple(Waiter(i, model, now - waited) for i, (model, waited) in enumerate(waiters))
    return SchedulerState(slots, queue, policy, now)
