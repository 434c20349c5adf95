"""The shell's rules, run for real against a fake driver and a fake clock: no Docker, no waiting."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.shell_fakes import FakeClock, FakeDriver, make_config, open_shell, until
from waker.core.driver import ContainerChange, ContainerEvent
from waker.core.events import (
    ContainerAdopted,
    IdleStopPostponed,
    ModelBackoff,
    ModelExited,
    ModelOom,
    ModelReady,
    ModelStopped,
    RequestAbandoned,
    RequestQueued,
)
from waker.core.lifecycle import State
from waker.errors import RequestRefused, StartError
from waker.nginx.activity import Mark, MarkKind
from waker.shell.events import EventBus
from waker.shell.fleet import Fleet
from waker.shell.supervisor import Supervisor


def request_for(shell, model_id: str) -> asyncio.Task[None]:
    return asyncio.ensure_future(shell.supervisor.acquire(shell.supervisor.config.model(model_id)))


async def ready(shell, model_id: str) -> None:
    await request_for(shell, model_id)
    assert shell.supervisor.state(model_id) is State.READY


def begin(shell, model_id: str, request: bytes) -> None:
    shell.supervisor.on_activity(Mark(MarkKind.BEGIN, model_id, request))


def end(shell, model_id: str, request: bytes) -> None:
    shell.supervisor.on_activity(Mark(MarkKind.END, model_id, request))


async def timer_in(shell, seconds: float) -> None:
    """Waits until the supervisor has asked to be called `seconds` from now."""
    due = shell.clock.now() + seconds
    await until(lambda: due in shell.clock.pending(), f"a timer {seconds} s from now")


# ---- starts -------------------------------------------------------------------------------------


async def test_a_burst_of_cold_requests_shares_one_start():
    shell = await open_shell(make_config({"id": "a"}))
    gate = shell.driver.hold("a")
    waiting = [request_for(shell, "a") for _ in range(20)]
    await shell.reach("a", State.STARTING)
    assert not any(w.done() for w in waiting)
    gate.set_result(None)
    await asyncio.gather(*waiting)
    assert shell.driver.up_calls("a") == 1
    assert shell.kinds(ModelReady, model="a")
    assert len(shell.supervisor.waiting) == 0


async def test_a_failed_start_answers_every_waiter_with_its_reason():
    shell = await open_shell(make_config({"id": "a"}))
    shell.driver.outcomes["a"].append(StartError(503, "model_exited", "model 'a' exited with code 1 while loading"))
    waiting = [request_for(shell, "a") for _ in range(3)]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RequestRefused) and r.code == "model_exited" for r in results)
    assert shell.supervisor.state("a") is State.FAILED
    assert shell.supervisor.records["a"].slot.failures == 1


async def test_back_off_after_repeated_failures_then_a_retry_once_it_has_passed():
    shell = await open_shell(make_config({"id": "a"}, max_start_failures=2, start_backoff="60s"))
    for _ in range(2):
        shell.driver.outcomes["a"].append(StartError(503, "model_exited", "boom"))
        with pytest.raises(RequestRefused):
            await request_for(shell, "a")
    assert shell.kinds(ModelBackoff, model="a", failures=2)
    with pytest.raises(RequestRefused) as refused:
        await request_for(shell, "a")  # in back-off: fails fast, no start
    assert refused.value.code == "model_failed" and refused.value.retry_after == 60
    assert shell.driver.up_calls("a") == 2
    shell.clock.advance(61)
    await ready(shell, "a")
    assert shell.driver.up_calls("a") == 3


async def test_a_crash_of_the_start_code_itself_fails_the_start_instead_of_hanging():
    class Broken(FakeDriver):
        async def up(self, model, died):
            raise KeyError("a bug")

    shell = await open_shell(make_config({"id": "a"}), Broken())
    with pytest.raises(RequestRefused) as refused:
        await request_for(shell, "a")
    assert refused.value.status == 500 and "KeyError" in refused.value.message
    assert shell.supervisor.state("a") is State.FAILED


async def test_a_container_that_dies_while_loading_ends_the_start_at_once():
    shell = await open_shell(make_config({"id": "a"}))
    shell.driver.hold("a")
    waiting = request_for(shell, "a")
    await shell.reach("a", State.STARTING)
    shell.driver.emit(ContainerEvent(ContainerChange.DIED, "a", "a-1", "1"))
    with pytest.raises(RequestRefused, match="exited"):
        await waiting
    assert shell.supervisor.state("a") is State.FAILED


async def test_a_client_that_hangs_up_while_queued_starts_nothing():
    shell = await open_shell(make_config({"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6}))
    await ready(shell, "a")
    begin(shell, "a", b"r1")  # a busy, so b waits for room
    waiting = request_for(shell, "b")
    await until(lambda: shell.kinds(RequestQueued, model="b"), "b queued")
    waiting.cancel()
    await until(lambda: shell.kinds(RequestAbandoned, model="b"), "b abandoned")
    assert len(shell.supervisor.waiting) == 0
    end(shell, "a", b"r1")
    assert shell.driver.up_calls("b") == 0


# ---- a model believed ready ---------------------------------------------------------------------


async def test_a_ready_model_that_no_longer_answers_is_stopped_and_started_again():
    shell = await open_shell(make_config({"id": "a"}))
    await ready(shell, "a")
    shell.driver.unhealthy.add("a")
    waiting = request_for(shell, "a")
    await until(lambda: shell.kinds(ModelStopped, model="a", reason="unreachable"), "the unreachable stop")
    shell.driver.unhealthy.discard("a")
    await waiting
    assert shell.driver.up_calls("a") == 2


async def test_a_ready_model_that_answers_is_granted_without_a_decision():
    shell = await open_shell(make_config({"id": "a"}))
    await ready(shell, "a")
    queued = len(shell.kinds(RequestQueued))
    await request_for(shell, "a")
    assert len(shell.kinds(RequestQueued)) == queued


async def test_an_exit_while_serving_is_a_failed_run_with_the_log_tail():
    shell = await open_shell(make_config({"id": "a"}))
    await ready(shell, "a")
    shell.driver.tails["a-1"] = "RuntimeError: engine core died"
    shell.driver.running_now.pop("a")
    shell.driver.emit(ContainerEvent(ContainerChange.DIED, "a", "a-1", "0"))
    assert shell.supervisor.state("a") is State.FAILED
    assert shell.kinds(ModelExited, model="a", exit_code="0")
    await until(lambda: "engine core died" in shell.supervisor.records["a"].slot.last_error, "the log tail added")
    assert shell.supervisor.records["a"].slot.failures == 1
    assert shell.supervisor.records["a"].container is None


async def test_only_a_run_the_waker_ended_resets_the_failure_count():
    shell = await open_shell(make_config({"id": "a", "idle_timeout": "10s", "min_uptime": "0s"}))
    await ready(shell, "a")
    shell.driver.running_now.pop("a")
    shell.driver.emit(ContainerEvent(ContainerChange.DIED, "a", "a-1", "0"))
    await ready(shell, "a")
    assert shell.supervisor.records["a"].slot.failures == 1  # ready again, but not yet a good run
    shell.clock.advance(11)
    await shell.reach("a", State.STOPPED)
    assert shell.supervisor.records["a"].slot.failures == 0


async def test_an_oom_is_reported():
    shell = await open_shell(make_config({"id": "a"}))
    await ready(shell, "a")
    shell.driver.emit(ContainerEvent(ContainerChange.OOM, "a", "a-1"))
    assert shell.kinds(ModelOom, model="a")


async def test_events_of_containers_of_unknown_models_are_ignored():
    shell = await open_shell(make_config({"id": "a"}))
    shell.driver.emit(ContainerEvent(ContainerChange.DIED, "ghost", "g-1", "1"))
    assert shell.supervisor.state("a") is State.STOPPED


# ---- idle stops ---------------------------------------------------------------------------------


async def test_an_idle_model_is_stopped_after_its_idle_timeout_and_not_before():
    shell = await open_shell(make_config({"id": "a", "idle_timeout": "10s", "min_uptime": "0s"}))
    await ready(shell, "a")
    begin(shell, "a", b"r1")
    shell.clock.advance(30)
    assert shell.supervisor.state("a") is State.READY  # a request in flight holds it
    end(shell, "a", b"r1")
    await timer_in(shell, 10)
    shell.clock.advance(9)
    assert shell.supervisor.state("a") is State.READY
    shell.clock.advance(1)
    await shell.reach("a", State.STOPPED)
    assert shell.kinds(ModelStopped, model="a", reason="idle")
    assert ("down", "a", "a-1") in shell.driver.calls


async def test_an_idle_stop_is_called_off_while_the_engine_reports_work():
    shell = await open_shell(make_config({"id": "a", "idle_timeout": "10s", "min_uptime": "0s"}))
    await ready(shell, "a")
    shell.driver.busy_counts["a"] = 2
    shell.clock.advance(10)
    await until(lambda: shell.kinds(IdleStopPostponed, model="a", server_requests=2), "the call-off")
    assert shell.supervisor.state("a") is State.READY
    shell.driver.busy_counts["a"] = 0
    await timer_in(shell, 10)
    shell.clock.advance(10)
    await shell.reach("a", State.STOPPED)
    # The stop says what the engine reported, to tell "it said 0" from "it did not say" (None).
    assert shell.kinds(ModelStopped, model="a", reason="idle", server_requests=0)


async def test_an_engine_that_does_not_answer_its_idle_check_is_asked_again_before_a_stop():
    """vLLM's API server stalls while its engine works (up to 14 s on a loaded CPU): no answer is not
    "idle". The check is made again after a pause, and the work it then reports calls the stop off."""
    shell = await open_shell(make_config({"id": "a", "idle_timeout": "10s", "min_uptime": "0s"}))
    await ready(shell, "a")
    shell.driver.busy_unanswered["a"] = 1
    shell.driver.busy_counts["a"] = 2
    shell.clock.advance(10)
    await until(lambda: shell.clock.sleepers, "the pause before the second check")
    assert shell.supervisor.state("a") is State.STOPPING and shell.driver.count("busy", "a") == 1
    shell.clock.advance(5)
    await until(lambda: shell.kinds(IdleStopPostponed, model="a", server_requests=2), "the call-off")
    assert shell.supervisor.state("a") is State.READY and shell.driver.count("down", "a") == 0


async def test_an_engine_that_never_answers_its_idle_check_is_stopped_after_three_checks():
    shell = await open_shell(make_config({"id": "a", "idle_timeout": "10s", "min_uptime": "0s"}))
    await ready(shell, "a")
    shell.driver.busy_unanswered["a"] = 3
    shell.clock.advance(10)
    for pause in (1, 2):
        await until(lambda: shell.clock.sleepers, f"pause {pause}")
        shell.clock.advance(5)
    await shell.reach("a", State.STOPPED)
    assert shell.driver.count("busy", "a") == 3
    assert shell.kinds(ModelStopped, model="a", reason="idle", server_requests=None)


async def test_an_idle_stop_is_called_off_by_a_request_that_arrives_during_its_check():
    shell = await open_shell(make_config({"id": "a", "idle_timeout": "10s", "min_uptime": "0s"}))
    await ready(shell, "a")
    checking, answer = shell.driver.hold_busy("a")
    shell.clock.advance(10)
    await asyncio.wait_for(checking.wait(), 2)
    begin(shell, "a", b"new")  # nginx passed a new request to the still-running engine
    answer.set_result(0)
    await until(lambda: shell.kinds(IdleStopPostponed, model="a", in_flight=1), "the call-off")
    assert shell.supervisor.state("a") is State.READY
    assert shell.driver.count("down", "a") == 0


async def test_a_refused_stop_is_retried_until_the_engine_accepts():
    shell = await open_shell(make_config({"id": "a", "idle_timeout": "10s", "min_uptime": "0s"}))
    await ready(shell, "a")
    shell.driver.down_failures = 1
    shell.clock.advance(10)
    await until(lambda: shell.clock.sleepers, "the retry's wait")
    assert shell.supervisor.state("a") is State.STOPPING
    shell.clock.advance(5)
    await shell.reach("a", State.STOPPED)
    assert sum(1 for c in shell.driver.calls if c[0] == "down") == 2


# ---- room on the GPU ----------------------------------------------------------------------------


async def test_an_idle_model_is_evicted_for_one_that_needs_the_room():
    shell = await open_shell(make_config({"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6}))
    await ready(shell, "a")
    await ready(shell, "b")
    assert shell.supervisor.state("a") is State.STOPPED
    assert shell.kinds(ModelStopped, model="a", reason="evicted", for_model="b")


async def test_a_busy_model_is_not_evicted_and_the_request_waits_then_times_out():
    shell = await open_shell(
        make_config({"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6}, queue_timeout="30s")
    )
    await ready(shell, "a")
    begin(shell, "a", b"r1")
    waiting = request_for(shell, "b")
    await timer_in(shell, 30)
    shell.clock.advance(30)
    with pytest.raises(RequestRefused) as refused:
        await waiting
    assert refused.value.status == 429 and refused.value.details["holders"][0]["model"] == "a"
    assert shell.supervisor.state("a") is State.READY


# ---- Docker's view ------------------------------------------------------------------------------


async def test_running_containers_are_adopted_after_a_restart_never_restarted():
    driver = FakeDriver(running_now={"a": "old-a"})
    shell = await open_shell(make_config({"id": "a"}, {"id": "b"}), driver)
    await shell.reach("a", State.READY)
    assert ("adopt", "a", "old-a") in driver.calls
    assert driver.up_calls("a") == 0
    assert shell.supervisor.records["a"].container == "old-a"
    assert shell.supervisor.state("b") is State.STOPPED


async def test_nothing_is_decided_before_the_first_sync():
    class Unsynced(FakeDriver):
        async def follow(self, on_event, on_connect, on_lost):
            await asyncio.Event().wait()

    driver = Unsynced()
    supervisor = Supervisor(
        make_config({"id": "a", "keep_warm": True}), Fleet({"local": driver}), EventBus(), FakeClock()
    )
    await supervisor.open()
    supervisor.reconcile()
    assert supervisor.state("a") is State.STOPPED and not driver.calls
    await supervisor.close()


async def test_docker_lost_and_back_marks_vanished_models_stopped_and_adopts_new_ones():
    shell = await open_shell(make_config({"id": "a"}, {"id": "b"}))
    await ready(shell, "a")
    shell.driver.lose("the Docker events stream ended")
    assert shell.supervisor.docker_error == "the Docker events stream ended"
    shell.driver.running_now = {"b": "hand-started-b"}  # meanwhile a died, b was started by hand
    await shell.driver.reconnect()
    assert shell.supervisor.docker_error is None
    assert shell.supervisor.state("a") is State.STOPPED
    await shell.reach("b", State.READY)
    assert ("adopt", "b", "hand-started-b") in shell.driver.calls


async def test_a_container_started_by_hand_is_adopted():
    shell = await open_shell(make_config({"id": "a"}))
    shell.driver.running_now["a"] = "by-hand"
    shell.driver.emit(ContainerEvent(ContainerChange.STARTED, "a", "by-hand"))
    await shell.reach("a", State.READY)
    assert shell.kinds(ContainerAdopted, model="a")


async def test_keep_warm_models_are_started_when_they_fit():
    shell = await open_shell(make_config({"id": "util", "keep_warm": True, "gpu_memory": 0.2}))
    await shell.reach("util", State.READY)
    assert shell.driver.up_calls("util") == 1


async def test_close_cancels_what_runs_and_closes_the_driver():
    shell = await open_shell(make_config({"id": "a"}))
    shell.driver.hold("a")
    request_for(shell, "a")
    await shell.reach("a", State.STARTING)
    await shell.supervisor.close()
    assert shell.driver.closed
