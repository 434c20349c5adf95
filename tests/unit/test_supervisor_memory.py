"""The memory guard in the shell, over a fake driver, a fake clock and a scripted /proc/meminfo: what a
model stopped by the guard answers, what it kills, what the back-off counts, and requests that wait
for memory starting once it is back."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.unit.shell_fakes import FakeDriver, make_config, open_shell, until
from waker.config.schema import Config, parse_config
from waker.core.events import MemoryGuardTripped, ModelReady, PageCacheDropped
from waker.core.lifecycle import State
from waker.core.memory import ContainerMemory, HostMemory, Trip
from waker.errors import DriverError, RequestRefused
from waker.nginx.activity import Mark, MarkKind
from waker.shell.memory_guard import BUSY_INTERVAL, ENGINE_BUSY_INTERVAL, REST_INTERVAL, STALE

GIB = 1024**3


class Meminfo:
    """This machine's memory as the test sets it (counting its reads), and the footprints kept."""

    def __init__(self, available_gib: float, learned: dict[str, int] | None = None) -> None:
        self.available = int(available_gib * GIB)
        self.free: int | None = None  # None: half of what is available
        self.reads = 0
        self.kept = dict(learned or {})
        self.kept_paused: dict[str, list[str]] = {}
        self.drops = 0

    def read(self) -> HostMemory:
        self.reads += 1
        free = self.available // 2 if self.free is None else self.free
        return HostMemory(total=24 * GIB, available=self.available, free=free, swap_free=0)

    def paused(self) -> dict[str, list[str]]:
        return dict(self.kept_paused)

    def remember_paused(self, paused) -> None:
        self.kept_paused = dict(paused)

    def drop_page_cache(self) -> None:
        self.drops += 1
        self.free = self.available

    def learned(self) -> dict[str, int]:
        return dict(self.kept)

    def remember(self, footprints) -> None:
        self.kept = dict(footprints)

    def set(self, available_gib: float) -> None:
        self.available = int(available_gib * GIB)


def request_for(shell, model_id: str) -> asyncio.Task[None]:
    return asyncio.ensure_future(shell.supervisor.acquire(shell.supervisor.config.model(model_id)))


def guard_waits(shell) -> list[float]:
    """How long from now the guard's pending wait for its next sample ends (none while it samples)."""
    return [round(at - shell.clock.now(), 6) for at, done in shell.clock.sleepers if not done.done()]


async def next_sample(shell, meminfo: Meminfo, interval: float | None = None) -> None:
    """Once the guard waits for its next sample (`interval` from now, if given), lets it take it."""

    def waiting() -> bool:
        waits = guard_waits(shell)
        return len(waits) == 1 and (interval is None or waits[0] == interval)

    await until(waiting, f"the guard waiting {interval or 'for its next sample'}")
    reads = meminfo.reads
    shell.clock.advance(guard_waits(shell)[0])
    await until(lambda: meminfo.reads > reads, "the guard's next sample")


async def test_a_start_that_takes_memory_below_the_floor_is_killed_and_its_waiters_get_the_figures():
    meminfo = Meminfo(12)
    shell = await open_shell(make_config({"id": "a"}, memory_floor="4GiB", max_start_failures=3), memory=meminfo)
    shell.driver.hold("a")
    waiters = [request_for(shell, "a") for _ in range(2)]
    await shell.reach("a", State.STARTING)
    meminfo.set(3.5)  # the engine's load grows past the floor
    await next_sample(shell, meminfo, BUSY_INTERVAL)  # sampled at the start, then often while it runs
    results = await asyncio.gather(*waiters, return_exceptions=True)
    for result in results:
        assert isinstance(result, RequestRefused) and (result.status, result.code) == (503, "memory_guard")
        assert "3.5 GiB available of 24.0 GiB, below the floor of 4.0 GiB" in result.message
    slot = shell.supervisor.records["a"].slot
    assert slot.state is State.FAILED and slot.failures == 1  # a failed run, as the back-off counts them
    await until(lambda: ("kill", "a", None) in shell.driver.calls, "the container killed, not stopped")
    (tripped,) = shell.kinds(MemoryGuardTripped)
    assert (tripped.model, tripped.state, tripped.available_bytes, tripped.floor_bytes) == (
        "a",
        State.STARTING,
        int(3.5 * GIB),
        4 * GIB,
    )


async def test_an_idle_model_is_stopped_when_another_program_takes_the_memory_and_only_one():
    meminfo = Meminfo(12)
    config = make_config({"id": "a", "gpu_memory": 0.3}, {"id": "b", "gpu_memory": 0.3}, memory_floor="4GiB")
    shell = await open_shell(config, memory=meminfo)
    await request_for(shell, "a")
    shell.clock.advance(5)
    await request_for(shell, "b")
    busy = Mark(MarkKind.BEGIN, "a", b"r1")
    shell.supervisor.on_activity(busy)  # 'a' serves a request: 'b', idle, goes first
    meminfo.set(2)
    await next_sample(shell, meminfo)
    assert [e.model for e in shell.kinds(MemoryGuardTripped)] == ["b"]
    assert shell.supervisor.state("a") is State.READY
    await until(lambda: not shell.supervisor.releasing, "the kill of 'b' done")
    await next_sample(shell, meminfo)
    assert [e.model for e in shell.kinds(MemoryGuardTripped)] == ["b", "a"]  # 'b' gone, still short: 'a' too


async def test_a_request_waiting_for_memory_starts_once_memory_is_back():
    meminfo = Meminfo(6)
    config = make_config(
        {"id": "busy", "gpu_memory": 0.3}, {"id": "big", "gpu_memory": 0.3, "memory": "4GiB"}, memory_floor="4GiB"
    )
    shell = await open_shell(config, memory=meminfo)
    await request_for(shell, "busy")
    shell.supervisor.on_activity(Mark(MarkKind.BEGIN, "busy", b"r1"))
    waiter = request_for(shell, "big")
    await until(lambda: len(shell.supervisor.waiting) == 1, "the request queued for memory")
    assert shell.supervisor.state("big") is State.STOPPED and shell.driver.up_calls("big") == 0
    meminfo.set(9)
    await next_sample(shell, meminfo)  # memory changes without an event: the guard's samples decide again
    await waiter
    assert shell.kinds(ModelReady, model="big")


async def test_without_a_floor_there_is_no_guard():
    meminfo = Meminfo(0.1)
    shell = await open_shell(make_config({"id": "a"}, memory_floor=0), memory=meminfo)
    await request_for(shell, "a")
    await next_sample(shell, meminfo)
    assert shell.supervisor.state("a") is State.READY and not shell.kinds(MemoryGuardTripped)
    assert shell.supervisor.policy_now().budgets[0].memory.floor == 0  # measured, shown, not enforced


@pytest.mark.parametrize(
    ("value", "error"),
    [("lots", "expected a size"), (-1, "must be positive"), (True, "expected a size")],
)
def test_a_bad_floor_says_what_a_floor_looks_like(value, error):
    with pytest.raises(Exception, match=error):
        make_config({"id": "a"}, memory_floor=value)


async def test_the_metrics_and_the_admin_api_show_the_memory_and_the_guards_stops(api):
    meminfo = Meminfo(12)
    shell, client = await api({"id": "a"}, memory=meminfo, memory_floor="4GiB")
    await request_for(shell, "a")
    meminfo.set(3)
    await next_sample(shell, meminfo)
    await until(lambda: not shell.supervisor.releasing, "the guard's kill done")
    text = await (await client.get("/metrics")).text()
    assert 'waker_memory_guard_stops_total{model="a"} 1' in text
    assert f'waker_host_memory_available_bytes{{host="local"}} {3 * GIB}' in text
    assert f'waker_host_memory_floor_bytes{{host="local"}} {4 * GIB}' in text
    listing = await (await client.get("/admin/models")).json()
    assert listing["hosts"][0]["memory"] == {
        "total_bytes": 24 * GIB,
        "available_bytes": 3 * GIB,
        "floor_bytes": 4 * GIB,
    }


async def test_a_kill_the_engine_refuses_is_tried_again_and_memory_that_cannot_be_read_stops_nothing():
    meminfo = Meminfo(12)
    shell = await open_shell(make_config({"id": "a"}, memory_floor="4GiB"), memory=meminfo)
    await request_for(shell, "a")
    shell.driver.down_failures = 1
    meminfo.set(3)
    await next_sample(shell, meminfo)
    await until(lambda: shell.clock.sleepers and shell.supervisor.releasing, "the refused kill waiting to retry")
    assert shell.supervisor.releasing == frozenset({"a"})
    shell.clock.advance(1)
    await until(lambda: not shell.supervisor.releasing, "the kill retried")
    assert [c for c in shell.driver.calls if c[0] == "kill"] == [("kill", "a", "a-1")] * 2

    def unreadable() -> HostMemory:
        raise OSError("no /proc/meminfo")

    meminfo.read = unreadable
    assert shell.supervisor.policy_now().budgets[0].memory is None  # then nothing is admitted by memory
    shell.clock.advance(BUSY_INTERVAL)
    shell.clock.advance(REST_INTERVAL)
    await asyncio.sleep(0)
    await shell.supervisor.close()  # the guard's task ends with the supervisor
    assert len(shell.kinds(MemoryGuardTripped)) == 1


async def test_a_start_teaches_the_models_footprint_which_admission_then_uses_and_a_restart_keeps():
    meminfo = Meminfo(20)
    config = make_config({"id": "a", "memory": "2GiB"}, memory_floor="4GiB")
    shell = await open_shell(config, memory=meminfo)
    gate = shell.driver.hold("a")
    first = request_for(shell, "a")
    await shell.reach("a", State.STARTING)
    meminfo.set(13.5)  # the load's peak: weights, KV cache, compile heaps
    await next_sample(shell, meminfo, BUSY_INTERVAL)
    meminfo.set(14)  # the heaps given back once it serves
    gate.set_result(None)
    await first
    await next_sample(shell, meminfo, BUSY_INTERVAL)
    # From 20 GiB before its start to 13.5 at its lowest (its container says nothing here).
    await until(lambda: meminfo.kept == {"a": int(6.5 * GIB)}, "the footprint kept")
    assert shell.supervisor.footprint(config.model("a")) == {
        "declared_bytes": 2 * GIB,
        "learned_bytes": int(6.5 * GIB),
        "exceeds_declared": True,
    }
    assert shell.supervisor.current_slots()["a"].memory == int(6.5 * GIB)  # the larger of the two
    await shell.supervisor.close()

    again = await open_shell(config, memory=Meminfo(10, learned=meminfo.kept))  # a waker restart
    refused = await asyncio.gather(request_for(again, "a"), return_exceptions=True)
    assert isinstance(refused[0], RequestRefused) and refused[0].code == "insufficient_memory"
    assert "declares 6.5 GiB" in refused[0].message and again.driver.up_calls("a") == 0


async def test_a_start_the_guard_killed_is_remembered_as_taking_at_least_what_it_had_taken():
    meminfo = Meminfo(12, learned={"a": GIB})
    shell = await open_shell(make_config({"id": "a"}, memory_floor="4GiB"), memory=meminfo)
    shell.driver.hold("a")
    refused = request_for(shell, "a")
    await shell.reach("a", State.STARTING)
    meminfo.set(3.5)
    await next_sample(shell, meminfo, BUSY_INTERVAL)
    assert isinstance((await asyncio.gather(refused, return_exceptions=True))[0], RequestRefused)
    await next_sample(shell, meminfo)
    assert meminfo.kept == {"a": int(8.5 * GIB)}


@pytest.mark.parametrize("dropping", [True, False])
async def test_a_start_that_free_memory_cannot_cover_but_cache_can_drops_the_cache_first(dropping):
    meminfo = Meminfo(20)
    meminfo.free = 5 * GIB  # 15 GiB of reclaimable page cache: weights just read, say
    config = make_config({"id": "a", "gpu_memory": 0.5}, memory_floor="4GiB", drop_page_cache=dropping)
    shell = await open_shell(config, memory=meminfo)
    await request_for(shell, "a")
    if not dropping:
        assert meminfo.drops == 0 and not shell.kinds(PageCacheDropped)
        return
    # vLLM's start check wants half of the 24 GiB free: 12 GiB, and the floor above it.
    assert meminfo.drops == 1
    assert shell.kinds(PageCacheDropped) == [PageCacheDropped("a", 12 * GIB, 5 * GIB, 20 * GIB)]
    await request_for(shell, "a")  # ready: no start, no drop
    assert meminfo.drops == 1


async def test_the_admin_api_shows_each_containers_memory_and_none_where_docker_does_not_say(api):
    shell, client = await api({"id": "a", "memory": "1GiB"}, {"id": "b"}, {"id": "c"}, memory=Meminfo(12))
    for model in ("a", "b"):
        await request_for(shell, model)
    shell.driver.memory_in_use["a-1"] = ContainerMemory(700 * 2**20, 900 * 2**20)
    shell.driver.memory_refused.add("b-2")
    listing = {m["id"]: m["memory"] for m in (await (await client.get("/admin/models")).json())["models"]}
    assert (listing["a"]["declared_bytes"], listing["a"]["current_bytes"], listing["a"]["peak_bytes"]) == (
        GIB,
        700 * 2**20,
        900 * 2**20,
    )
    assert listing["b"]["current_bytes"] is None and listing["c"]["current_bytes"] is None  # refused; no container
    single = await (await client.get("/admin/models/a")).json()
    assert single["memory"]["current_bytes"] == 700 * 2**20
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert [line for line in metrics if line.startswith("waker_model_memory")] == [
        f'waker_model_memory_bytes{{model="a"}} {700 * 2**20}',
        f'waker_model_memory_declared_bytes{{model="a"}} {GIB}',
    ]  # b: its engine did not say; c: no container; none learned yet


async def test_what_the_container_holds_once_ready_counts_when_the_host_hides_it():
    """Something else gave memory back while the model loaded: the host's figure fell less than the
    model took, and its container's own account is the larger."""
    meminfo = Meminfo(20)
    shell = await open_shell(make_config({"id": "a"}, memory_floor="4GiB"), memory=meminfo)
    gate = shell.driver.hold("a")
    started = request_for(shell, "a")
    await shell.reach("a", State.STARTING)
    meminfo.set(19.5)
    await next_sample(shell, meminfo, BUSY_INTERVAL)
    shell.driver.memory_in_use["a-1"] = ContainerMemory(3 * GIB, None)
    gate.set_result(None)
    await started
    await next_sample(shell, meminfo, BUSY_INTERVAL)
    await until(lambda: meminfo.kept == {"a": 3 * GIB}, "the container's 3 GiB kept, not the host's 0.5")
    assert shell.supervisor.footprint(shell.supervisor.config.model("a"))["learned_bytes"] == 3 * GIB


def two_hosts_floors(*models: dict) -> Config:
    """Host "one" is this machine; "two" is read through its engine and keeps a floor of its own."""
    raw = {
        "host": [
            {"name": "one"},
            {"name": "two", "docker_host": "ssh://two", "address": "10.0.0.2", "memory_floor": "6GiB"},
        ],
        "model": [{"image": "fake:test", "gpu_memory": 0.5, **m} for m in models],
    }
    return parse_config(raw, Path("/nonexistent/models.toml"))


async def test_a_remote_hosts_memory_is_read_through_its_engine_and_guarded_with_its_own_floor():
    meminfo = Meminfo(12)
    one, two = FakeDriver(), FakeDriver()
    two.host_memory_now = HostMemory(total=24 * GIB, available=10 * GIB, free=GIB, swap_free=0)
    config = two_hosts_floors({"id": "a", "host": "one"}, {"id": "b", "host": "two", "image": "vllm:b"})
    shell = await open_shell(config, hosts={"one": one, "two": two}, memory=meminfo)
    await until(lambda: two.memory_reads, "host two's first reading")
    assert two.memory_reads[0] == ("fake:test", "vllm:b")  # the probe is made from a model's image
    views = {b.name: b.memory for b in shell.supervisor.policy_now().budgets}
    assert (views["one"].available, views["one"].floor) == (12 * GIB, 2 * GIB)  # [scheduler]'s default floor
    assert (views["two"].available, views["two"].floor) == (10 * GIB, 6 * GIB)

    two.hold("b")
    waiter = request_for(shell, "b")
    await shell.reach("b", State.STARTING)
    two.host_memory_now = replace(two.host_memory_now, available=5 * GIB)  # below two's floor, not one's
    reads = len(two.memory_reads)
    await until(lambda: len(guard_waits(shell)) == 2, "both guards waiting for their next sample")
    shell.clock.advance(ENGINE_BUSY_INTERVAL)  # a remote host is sampled as often as its probe writes
    await until(lambda: len(two.memory_reads) > reads, "host two sampled")
    with pytest.raises(RequestRefused) as refused:
        await waiter
    assert refused.value.code == "memory_guard"
    assert "host 'two' had 5.0 GiB available of 24.0 GiB, below the floor of 6.0 GiB" in refused.value.message
    (tripped,) = shell.kinds(MemoryGuardTripped)
    assert (tripped.model, tripped.host, tripped.floor_bytes) == ("b", "two", 6 * GIB)
    await until(lambda: ("kill", "b", None) in two.calls, "b's container killed on host two")
    assert shell.supervisor.state("a") is State.STOPPED  # nothing on host one touched

    await until(lambda: not shell.supervisor.releasing, "the kill done")
    two.host_memory_now = DriverError("cannot read the memory probe's output: the Docker engine is not reachable")
    with capture_logs() as logs:
        for _ in range(2):
            reads = len(two.memory_reads)
            await until(lambda: len(guard_waits(shell)) == 2, "both guards waiting")
            shell.clock.advance(REST_INTERVAL)
            await until(lambda reads=reads: len(two.memory_reads) > reads, "host two sampled")
    assert [e["host"] for e in logs if e["event"] == "memory_unreadable"] == ["two"]  # once, not every sample
    assert {b.name: b.memory for b in shell.supervisor.policy_now().budgets}["two"] is None
    hosts = {h.name: h for h in shell.supervisor.host_status(shell.supervisor.current_slots())}
    assert hosts["two"].memory is None and "not reachable" in hosts["two"].memory_error
    assert hosts["one"].memory.available_bytes == 12 * GIB and hosts["one"].memory_error is None
    two.host_memory_now = HostMemory(total=24 * GIB, available=9 * GIB, free=GIB, swap_free=0)
    with capture_logs() as logs:
        await until(lambda: len(guard_waits(shell)) == 2, "both guards waiting")
        shell.clock.advance(REST_INTERVAL)
        await until(lambda: shell.supervisor.guards["two"].error is None, "host two read again")
    assert [e["host"] for e in logs if e["event"] == "memory_readable"] == ["two"]
    assert {b.name: b.memory for b in shell.supervisor.policy_now().budgets}["two"].available == 9 * GIB
    await shell.supervisor.close()
    assert two.memory_readings_ended and not one.memory_readings_ended  # the probe removed from host two


async def test_a_remote_hosts_last_reading_goes_stale_when_its_sampling_stops():
    one, two = FakeDriver(), FakeDriver()
    two.host_memory_now = HostMemory(total=24 * GIB, available=10 * GIB, free=GIB, swap_free=0)
    shell = await open_shell(two_hosts_floors({"id": "a"}), hosts={"one": one, "two": two}, memory=Meminfo(12))
    await until(lambda: two.memory_reads, "host two's first reading")
    guard = shell.supervisor.guards["two"]
    assert guard.view(frozenset()) is not None
    guard.latest_at -= STALE + 1  # as if its engine had not answered a sample since
    assert guard.view(frozenset()) is None  # an old reading weighs no start
    assert await guard.free_for(GIB) is None  # a remote host's page cache is not the waker's to drop

    async def unreachable() -> None:
        raise DriverError("cannot remove the memory probe: the Docker engine is not reachable")

    guard.end = unreachable
    with capture_logs() as logs:
        await shell.supervisor.close()  # the waker stops all the same, saying what it left
    (left,) = [e for e in logs if e["event"] == "memory_probe_left"]
    assert left["host"] == "two" and "not reachable" in left["error"]


async def test_memory_on_its_way_back_on_one_host_holds_back_only_that_host():
    meminfo = Meminfo(12)
    one, two = FakeDriver(down_failures=1000), FakeDriver()  # one's engine refuses the kill, again and again
    two.host_memory_now = HostMemory(total=24 * GIB, available=10 * GIB, free=GIB, swap_free=0)
    config = two_hosts_floors({"id": "a", "host": "one"}, {"id": "b", "host": "two"})
    shell = await open_shell(config, hosts={"one": one, "two": two}, memory=meminfo)
    await request_for(shell, "a")
    await request_for(shell, "b")
    meminfo.set(1)  # below one's floor (the default 2 GiB): a is killed, and its kill keeps failing
    await until(lambda: len(guard_waits(shell)) == 2, "both guards waiting")
    shell.clock.advance(REST_INTERVAL)
    await until(lambda: shell.supervisor.releasing == frozenset({"a"}), "a's memory on its way back")
    two.host_memory_now = replace(two.host_memory_now, available=5 * GIB)  # below two's own floor
    await until(lambda: len(guard_waits(shell)) >= 2, "the guards waiting")
    shell.clock.advance(REST_INTERVAL)  # two's next sample (at rest: nothing of its own is coming back)
    await until(lambda: shell.kinds(MemoryGuardTripped, model="b"), "b stopped by host two's guard")
    assert {b.name: b.memory.releasing for b in shell.supervisor.policy_now().budgets} == {"one": True, "two": False}
    assert [e.model for e in shell.kinds(MemoryGuardTripped)] == ["a", "b"]
    await shell.supervisor.close()


async def test_a_trip_for_a_model_no_longer_running_stops_nothing():
    shell = await open_shell(make_config({"id": "a"}), memory=Meminfo(12))
    trip = Trip("a", "model 'a' was stopped by the memory guard")
    shell.supervisor.memory_trip(trip, HostMemory(24 * GIB, GIB, GIB, 0), 2 * GIB, "local")  # 'a' is stopped
    assert shell.supervisor.state("a") is State.STOPPED and not shell.kinds(MemoryGuardTripped)
    await shell.supervisor.close()
