"""The memory guard's pure rules: whom the guard stops below the floor (`core.memory.victim`), and how
the scheduler weighs a start or a wake against the host's memory (rule 4 of `core.scheduler`)."""

from __future__ import annotations

import pytest

from waker.config.hosts import IMPLICIT_HOST
from waker.config.schema import OnBusy
from waker.core.lifecycle import State, StopReason
from waker.core.memory import HostMemory, last_probe_reading, page_cache_in_the_way, parse_meminfo, victim
from waker.core.plan import HostBudget, MemoryView, Policy, Refuse, Slot, Start, Stop, Waiter, Wake
from waker.core.scheduler import decide
from waker.system.memory import ThisMachine, may_drop_page_cache

GIB = 1024**3
NOW = 1000.0
FLOOR = 8 * GIB


def memory(available_gib: float) -> HostMemory:
    return HostMemory(total=121 * GIB, available=int(available_gib * GIB), free=GIB, swap_free=0)


def slot(id: str, state: State, **kw) -> Slot:
    return Slot(**{"id": id, "gpu_memory": 0.3, "state": state, **kw})


# ---- the guard's victim ----------------------------------------------------------------------------


def test_above_the_floor_or_without_one_nothing_is_stopped():
    running = [slot("a", State.STARTING, starting_since=NOW)]
    assert victim(running, memory(8.5), FLOOR, frozenset()) is None
    assert victim(running, memory(1), 0, frozenset()) is None


def test_the_model_starting_goes_first_and_the_message_gives_the_figures():
    running = [
        slot("idle", State.READY, ready_since=NOW - 10),
        slot("loading", State.STARTING, starting_since=NOW - 100),
    ]
    trip = victim(running, memory(6.25), FLOOR, frozenset())
    assert trip is not None and trip.model == "loading"
    assert "6.2 GiB available of 121.0 GiB" in trip.message and "floor of 8.0 GiB" in trip.message
    assert "while it started" in trip.message and "memory_floor" in trip.message


def test_a_waking_model_goes_before_those_that_serve():
    running = [slot("serving", State.READY, ready_since=NOW), slot("waking", State.WAKING, since=NOW - 1)]
    trip = victim(running, memory(2), FLOOR, frozenset())
    assert trip is not None and trip.model == "waking" and "while it woke" in trip.message


def test_an_idle_model_goes_before_a_busy_one_and_the_latest_started_first():
    running = [
        slot("busy", State.READY, ready_since=NOW - 1, in_flight=3),
        slot("idle_old", State.READY, ready_since=NOW - 500),
        slot("idle_new", State.READY, ready_since=NOW - 50),
        slot("asleep", State.SLEEPING, ready_since=NOW - 900),
    ]
    assert victim(running, memory(2), FLOOR, frozenset()).model == "idle_new"
    only_busy = [slot("busy_old", State.READY, ready_since=NOW - 90, in_flight=1), running[0]]
    trip = victim(only_busy, memory(2), FLOOR, frozenset())
    assert trip.model == "busy" and "1 request(s)" not in trip.message and "3 request(s) in flight" in trip.message


def test_a_pinned_model_goes_last():
    running = [slot("pinned", State.READY, ready_since=NOW, pinned=True), slot("busy", State.READY, in_flight=1)]
    assert victim(running, memory(2), FLOOR, frozenset()).model == "busy"
    assert victim(running[:1], memory(2), FLOOR, frozenset()).model == "pinned"


@pytest.mark.parametrize("going", [State.STOPPING, State.FALLING_ASLEEP])
def test_memory_on_its_way_back_stops_nothing_more(going):
    running = [slot("leaving", going), slot("loading", State.STARTING)]
    assert victim(running, memory(2), FLOOR, frozenset()) is None
    assert victim(running[1:], memory(2), FLOOR, frozenset({"killed"})) is None
    assert victim(running[1:], memory(2), FLOOR, frozenset()).model == "loading"


def test_nothing_of_ours_running_stops_nothing():
    assert victim([slot("a", State.STOPPED), slot("b", State.FAILED)], memory(1), FLOOR, frozenset()) is None


def test_meminfo_is_read_in_bytes():
    text = "MemTotal: 24576000 kB\nMemFree: 1000 kB\nMemAvailable: 12288000 kB\nSwapFree: 0 kB\nHugePages_Total: 0\n"
    assert parse_meminfo(text) == HostMemory(24576000 * 1024, 12288000 * 1024, 1000 * 1024, 0)


def probe_reading(uptime: float, available_kb: int) -> list[str]:
    return [
        f"uptime {uptime}",
        "MemTotal: 24576000 kB",
        "MemFree: 1000 kB",
        f"MemAvailable: {available_kb} kB",
        "SwapFree: 0 kB",
        ".",
    ]


def test_the_probes_last_whole_reading_is_taken_with_the_hosts_uptime():
    lines = [*probe_reading(100.5, 2000), *probe_reading(101.0, 3000), "uptime 101.5", "MemTotal: 24576000 kB"]
    uptime, memory = last_probe_reading(lines)
    assert uptime == 101.0 and memory.available == 3000 * 1024  # the reading still being written waits


def test_a_probe_reading_cut_short_by_the_logs_rotation_leaves_the_one_before():
    cut = probe_reading(102.0, 5000)
    lines = [*probe_reading(101.0, 3000), *cut[:1], *cut[3:]]  # lost MemTotal and MemFree
    assert last_probe_reading(lines) == (101.0, HostMemory(24576000 * 1024, 3000 * 1024, 1000 * 1024, 0))
    assert last_probe_reading(cut[2:]) is None  # nothing whole yet (a probe just started)
    assert last_probe_reading(["uptime soon", *cut[1:]]) is None


# ---- admission ---------------------------------------------------------------------------------------


def policy(available_gib: float, releasing: bool = False, on_busy: OnBusy = OnBusy.QUEUE) -> Policy:
    view = MemoryView(int(available_gib * GIB), 121 * GIB, FLOOR, releasing)
    return Policy(on_busy=on_busy, hosts=(HostBudget(IMPLICIT_HOST, 1.0, memory=view),))


def waiting(model: str) -> tuple[Waiter, ...]:
    return (Waiter(0, model, NOW - 1),)


def test_a_start_that_fits_above_the_floor_goes_ahead():
    state = {"big": slot("big", State.STOPPED, memory=60 * GIB)}
    assert decide(state, waiting("big"), policy(70), NOW).actions == (Start("big", (IMPLICIT_HOST,)),)


def test_a_declared_footprint_that_cannot_fit_beside_nothing_of_ours_is_refused_with_the_figures():
    state = {"big": slot("big", State.STOPPED, memory=70 * GIB)}
    (refusal,) = decide(state, waiting("big"), policy(70), NOW).actions
    assert isinstance(refusal, Refuse) and (refusal.status, refusal.code) == (503, "insufficient_memory")
    for figure in ("70.0 GiB of memory available", "floor kept free is 8.0 GiB", "declares 70.0 GiB", "other programs"):
        assert figure in refusal.message


def test_below_the_floor_nothing_starts_even_without_a_declared_footprint():
    state = {"small": slot("small", State.STOPPED)}
    (refusal,) = decide(state, waiting("small"), policy(7), NOW).actions
    assert refusal.code == "insufficient_memory" and "nothing is left above it" in refusal.message


def test_short_of_memory_the_least_recently_used_idle_model_is_stopped_one_at_a_time():
    state = {
        "old": slot("old", State.READY, last_active=NOW - 500, gpu_memory=0.1),
        "new": slot("new", State.READY, last_active=NOW - 5, gpu_memory=0.1),
        "big": slot("big", State.STOPPED, memory=40 * GIB),
    }
    plan = decide(state, waiting("big"), policy(30), NOW)
    assert plan.actions == (Stop("old", StopReason.EVICTED, "big"),)


def test_while_memory_comes_back_the_start_waits():
    state = {"big": slot("big", State.STOPPED, memory=40 * GIB)}
    assert decide(state, waiting("big"), policy(60, releasing=True), NOW).actions == ()
    leaving = {**state, "old": slot("old", State.STOPPING)}
    assert decide(leaving, waiting("big"), policy(30), NOW).actions == ()


def test_with_only_busy_models_the_request_queues_or_is_refused_as_on_busy_says():
    state = {"busy": slot("busy", State.READY, in_flight=2), "big": slot("big", State.STOPPED, memory=40 * GIB)}
    queued = decide(state, waiting("big"), policy(30), NOW)
    assert queued.actions == () and queued.wake_at == NOW - 1 + Policy().queue_timeout
    (refusal,) = decide(state, waiting("big"), policy(30, on_busy=OnBusy.REJECT), NOW).actions
    assert (refusal.status, refusal.code) == (429, "model_busy") and "memory is short" in refusal.message


def test_a_wake_needs_only_what_sleeping_gave_back():
    asleep = slot("m", State.SLEEPING, gpu_memory=0.5, sleep_memory=0.1, memory=50 * GIB)
    assert decide({"m": asleep}, waiting("m"), policy(50), NOW).actions == (Wake("m"),)  # 40 GiB of 42 above
    assert decide({"m": asleep}, waiting("m"), policy(40), NOW).of(Refuse)[0].code == "insufficient_memory"


def test_a_keep_warm_model_is_not_restored_below_the_floor():
    state = {"warm": slot("warm", State.STOPPED, keep_warm=True, memory=10 * GIB)}
    assert decide(state, (), policy(12), NOW).actions == ()
    assert decide(state, (), policy(30), NOW).actions == (Start("warm", (IMPLICIT_HOST,)),)


def test_footprints_are_kept_in_the_state_directory_and_a_bad_file_is_ignored(tmp_path):
    machine = ThisMachine(tmp_path / "state")
    assert machine.learned() == {}  # no file yet
    machine.remember({"b": 2 * GIB, "a": GIB})
    assert ThisMachine(tmp_path / "state").learned() == {"a": GIB, "b": 2 * GIB}
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["footprints.json"]  # no partial file left
    (tmp_path / "state" / "footprints.json").write_text('{"a": -1, "b": "x", "c": 5, "d": true}')
    assert machine.learned() == {"c": 5}
    (tmp_path / "state" / "footprints.json").write_text("[1, 2")
    assert machine.learned() == {}
    assert machine.paused() == {}
    machine.remember_paused({"c2": ["b"], "c1": ["a", "b"]})
    assert ThisMachine(tmp_path / "state").paused() == {"c1": ["a", "b"], "c2": ["b"]}
    assert machine.read().total > 0  # this machine's own /proc/meminfo


def test_page_cache_is_in_the_way_only_when_free_memory_falls_short_and_available_does_not():
    def machine(free_gib: float, available_gib: float) -> HostMemory:
        return HostMemory(121 * GIB, int(available_gib * GIB), int(free_gib * GIB), 0)

    assert page_cache_in_the_way(machine(10, 100), 60 * GIB, FLOOR)  # 90 GiB of cache would cover it
    assert not page_cache_in_the_way(machine(90, 100), 60 * GIB, FLOOR)  # free memory covers it
    assert not page_cache_in_the_way(machine(10, 60), 60 * GIB, FLOOR)  # not even with the cache dropped


def test_only_root_on_the_host_may_drop_the_page_cache(tmp_path):
    writable = tmp_path / "drop_caches"
    writable.write_text("")
    assert may_drop_page_cache(writable) is None
    machine = ThisMachine(tmp_path, drop_caches=writable)
    machine.drop_page_cache()
    assert writable.read_text() == "3\n"
    assert "not writable by this process" in may_drop_page_cache(tmp_path / "absent" / "drop_caches")
