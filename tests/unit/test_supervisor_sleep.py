"""Sleep mode in the shell, run for real against a fake driver, a fake nginx gate and a fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog
import tomli_w

from tests.unit.shell_fakes import FakeDriver, FakeNginx, make_config, open_shell, until
from tests.unit.test_supervisor import begin, end, ready, request_for
from waker.config.schema import load_config
from waker.core.driver import ContainerChange, ContainerEvent
from waker.core.events import (
    ModelAsleep,
    ModelAwake,
    ModelStateChanged,
    ModelStopped,
    SleepCalledOff,
    SleepFailed,
    WakeFailed,
)
from waker.core.lifecycle import State
from waker.errors import AdminError, SleepModeError, SleepStep
from waker.shell.manual_control import SleepOutcome

NOTHING: frozenset[str] = frozenset()


def sleeper(model_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "sleep": 1,
        "command": ["--served-model-name", model_id],
        "idle_timeout": "10s",
        "min_uptime": "0s",
        **extra,
    }


async def sleep_shell(*models: dict[str, Any], driver: FakeDriver | None = None, **scheduler: Any):
    driver = driver or FakeDriver()
    nginx = FakeNginx(driver)
    return await open_shell(make_config(*models, **scheduler), driver, nginx=nginx, router=nginx), nginx


async def asleep(shell, model_id: str) -> None:
    """Lets the model's idle timeout pass and waits until it is asleep."""
    await ready(shell, model_id)
    shell.clock.advance(10)
    await shell.reach(model_id, State.SLEEPING)


async def gate_is(nginx: FakeNginx, asleep_set: frozenset[str]) -> None:
    await until(lambda: nginx.gates and nginx.gates[-1] == asleep_set, f"nginx routed with {set(asleep_set)} gated")


async def test_an_idle_model_sleeps_with_its_gate_closed_before_the_sleep_call():
    shell, nginx = await sleep_shell(sleeper("a"))
    await asleep(shell, "a")
    calls = shell.driver.calls
    assert calls.index(("route", frozenset({"a"}))) < calls.index(("sleep", "a"))
    assert shell.driver.count("down", "a") == 0 and shell.supervisor.records["a"].container == "a-1"
    assert shell.kinds(ModelAsleep, model="a", reason="idle")
    assert nginx.gates[-1] == frozenset({"a"})


async def test_a_sleep_waits_for_an_answer_from_a_stalled_engine_and_its_work_calls_it_off():
    """Sleeping aborts the engine's requests: an engine that does not answer its check is asked again."""
    shell, nginx = await sleep_shell(sleeper("a"))
    await ready(shell, "a")
    shell.driver.busy_unanswered["a"] = 1
    shell.driver.busy_counts["a"] = 1
    shell.clock.advance(10)
    await until(lambda: shell.clock.sleepers, "the pause before the second check")
    assert shell.supervisor.state("a") is State.FALLING_ASLEEP and shell.driver.count("sleep", "a") == 0
    shell.clock.advance(5)
    await until(lambda: shell.kinds(SleepCalledOff, model="a", server_requests=1), "the call-off")
    assert shell.supervisor.state("a") is State.READY and shell.driver.count("sleep", "a") == 0


async def test_a_request_arriving_during_the_sleep_check_calls_it_off_and_reopens_the_gate():
    shell, nginx = await sleep_shell(sleeper("a"))
    await ready(shell, "a")
    checking, answer = shell.driver.hold_busy("a")
    shell.clock.advance(10)
    await asyncio.wait_for(checking.wait(), 2)
    begin(shell, "a", b"late")  # passed on to the engine before nginx took the closed gate
    answer.set_result(0)
    await until(lambda: shell.kinds(SleepCalledOff, model="a", in_flight=1), "the call-off")
    assert shell.supervisor.state("a") is State.READY
    assert shell.driver.count("sleep", "a") == 0
    await gate_is(nginx, NOTHING)


async def test_one_wake_serves_every_waiter_and_the_gate_opens_after_it():
    shell, nginx = await sleep_shell(sleeper("a"))
    await asleep(shell, "a")
    held = shell.driver.hold_wake("a")
    waiting = [request_for(shell, "a") for _ in range(10)]
    await shell.reach("a", State.WAKING)
    assert not any(w.done() for w in waiting) and nginx.gates[-1] == frozenset({"a"})
    held.set_result(None)
    await asyncio.gather(*waiting)
    assert shell.driver.count("wake", "a") == 1 and shell.driver.up_calls("a") == 1
    assert shell.kinds(ModelAwake, model="a")
    await gate_is(nginx, NOTHING)


async def test_a_failed_wake_stops_the_model_and_starts_it_cold_for_its_waiter():
    shell, nginx = await sleep_shell(sleeper("a"))
    await asleep(shell, "a")
    shell.driver.fail_wake("a", timed_out=True)
    await request_for(shell, "a")  # answered: by the cold start
    assert shell.supervisor.state("a") is State.READY
    assert shell.driver.up_calls("a") == 2 and ("down", "a", "a-1") in shell.driver.calls
    assert shell.kinds(WakeFailed, model="a", step="check_serves", timed_out=True, wake_failures=1)
    assert shell.kinds(ModelStopped, model="a", reason="wake_failed")
    assert shell.supervisor.records["a"].slot.wake_failures == 1
    await gate_is(nginx, NOTHING)


async def test_after_max_wake_failures_an_idle_model_is_stopped_instead_of_slept():
    shell, _ = await sleep_shell(sleeper("a"), max_wake_failures=2)
    for failures in (1, 2):
        await asleep(shell, "a")
        shell.driver.fail_wake("a")
        await request_for(shell, "a")
        assert shell.supervisor.records["a"].slot.wake_failures == failures
    shell.clock.advance(10)
    await shell.reach("a", State.STOPPED)
    assert shell.kinds(ModelStopped, model="a", reason="idle")
    assert shell.driver.count("sleep", "a") == 2
    shell.control.stop_by_hand("a")  # the operator clears the count: it sleeps again
    await asleep(shell, "a")


async def test_a_refused_sleep_stops_the_model():
    shell, nginx = await sleep_shell(sleeper("a"))
    await ready(shell, "a")
    shell.driver.sleep_outcomes["a"].append(SleepModeError(SleepStep.SLEEP, "POST /sleep?level=1 answered 500"))
    shell.clock.advance(10)
    await shell.reach("a", State.STOPPED)
    assert shell.kinds(SleepFailed, model="a", step="sleep")
    assert shell.kinds(ModelStopped, model="a", reason="sleep_failed")
    await gate_is(nginx, NOTHING)


async def test_a_model_asleep_for_its_sleep_timeout_is_stopped():
    shell, nginx = await sleep_shell(sleeper("a", sleep_timeout="60s"))
    await asleep(shell, "a")
    shell.clock.advance(59)
    await asyncio.sleep(0)
    assert shell.supervisor.state("a") is State.SLEEPING
    shell.clock.advance(1)
    await shell.reach("a", State.STOPPED)
    assert shell.kinds(ModelStopped, model="a", reason="sleep_timeout")
    await gate_is(nginx, NOTHING)


async def test_room_is_made_by_putting_an_idle_model_to_sleep():
    shell, _ = await sleep_shell(
        sleeper("a", gpu_memory=0.6, sleep_memory=0.1, idle_timeout="1h"), {"id": "b", "gpu_memory": 0.6}
    )
    await ready(shell, "a")
    await ready(shell, "b")
    assert shell.supervisor.state("a") is State.SLEEPING
    assert shell.kinds(ModelAsleep, model="a", reason="room", for_model="b")
    assert shell.driver.count("down", "a") == 0
    await ready(shell, "a")  # b is idle and cannot sleep: it is stopped, and a wakes in its room
    assert shell.driver.count("wake", "a") == 1 and shell.driver.up_calls("a") == 1
    assert shell.kinds(ModelStopped, model="b", reason="evicted", for_model="a")


async def test_a_death_while_asleep_is_a_failed_run_and_opens_the_gate():
    shell, nginx = await sleep_shell(sleeper("a"))
    await asleep(shell, "a")
    shell.driver.running_now.pop("a")
    shell.driver.emit(ContainerEvent(ContainerChange.DIED, "a", "a-1", "137"))
    assert shell.supervisor.state("a") is State.FAILED
    assert "while sleeping" in shell.supervisor.records["a"].slot.last_error
    await gate_is(nginx, NOTHING)
    await request_for(shell, "a")
    assert shell.driver.up_calls("a") == 2


async def test_a_sleeping_model_found_gone_on_a_resync_is_stopped():
    shell, nginx = await sleep_shell(sleeper("a"))
    await asleep(shell, "a")
    shell.driver.lose("the Docker events stream ended")
    shell.driver.running_now.clear()
    await shell.driver.reconnect()
    assert shell.supervisor.state("a") is State.STOPPED
    await gate_is(nginx, NOTHING)


async def test_an_adopted_container_that_sleeps_stays_asleep_and_gated():
    driver = FakeDriver(running_now={"a": "old-a"}, asleep={"a"})
    shell, nginx = await sleep_shell(sleeper("a"), driver=driver)
    await shell.reach("a", State.SLEEPING)
    await gate_is(nginx, frozenset({"a"}))
    assert driver.count("wake", "a") == 0 and driver.up_calls("a") == 0
    await request_for(shell, "a")
    assert driver.count("wake", "a") == 1


def write(path: Path, models: list[dict[str, Any]]) -> None:
    path.write_text(tomli_w.dumps({"model": [{"image": "fake:test", "gpu_memory": 0.3, **m} for m in models]}))


async def test_a_config_reload_keeps_a_sleeping_models_gate_closed(tmp_path):
    path = tmp_path / "models.toml"
    write(path, [sleeper("a")])
    driver = FakeDriver()
    nginx = FakeNginx(driver)
    shell = await open_shell(load_config(path), driver, nginx=nginx, router=nginx)
    await asleep(shell, "a")
    write(path, [sleeper("a"), {"id": "b"}])
    await shell.control.reload()
    assert nginx.gates[-1] == frozenset({"a"}) and nginx.reloaded
    assert shell.supervisor.state("a") is State.SLEEPING


async def test_without_a_router_nothing_sleeps_and_the_start_says_so():
    with structlog.testing.capture_logs() as logs:
        shell = await open_shell(make_config(sleeper("a")))
    assert [e for e in logs if e["event"] == "sleep_disabled" and e["models"] == ["a"]]
    await ready(shell, "a")
    shell.clock.advance(10)
    await shell.reach("a", State.STOPPED)
    assert shell.kinds(ModelStopped, model="a", reason="idle") and shell.driver.count("sleep", "a") == 0
    with pytest.raises(AdminError, match="--nginx none"):
        shell.control.sleep_by_hand("a")


async def test_sleep_by_hand_puts_only_a_ready_idle_sleep_capable_model_to_sleep():
    shell, _ = await sleep_shell(sleeper("a", idle_timeout="1h"), {"id": "plain"})
    with pytest.raises(AdminError, match="only a ready model"):
        shell.control.sleep_by_hand("a")
    await ready(shell, "plain")
    with pytest.raises(AdminError, match="sleep = 0"):
        shell.control.sleep_by_hand("plain")
    await ready(shell, "a")
    begin(shell, "a", b"r1")
    with pytest.raises(AdminError, match="1 request"):
        shell.control.sleep_by_hand("a")
    end(shell, "a", b"r1")
    assert shell.control.sleep_by_hand("a") is SleepOutcome.FALLING_ASLEEP
    await shell.reach("a", State.SLEEPING)
    assert shell.kinds(ModelAsleep, model="a", reason="manual")
    assert shell.control.sleep_by_hand("a") is SleepOutcome.ALREADY_ASLEEP


async def test_a_gate_nginx_cannot_close_calls_the_sleep_off():
    driver = FakeDriver()
    nginx = FakeNginx(driver, refuse_reload=True)
    shell = await open_shell(make_config(sleeper("a")), driver, nginx=nginx, router=nginx)
    await ready(shell, "a")
    shell.clock.advance(10)
    await until(lambda: shell.kinds(SleepCalledOff, model="a"), "the call-off")
    assert "nginx could not close its gate" in shell.kinds(SleepCalledOff, model="a")[0].reason
    assert shell.supervisor.state("a") is State.READY and driver.count("sleep", "a") == 0


async def test_a_crash_while_waking_is_a_failed_wake_and_its_waiter_gets_a_cold_start():
    shell, nginx = await sleep_shell(sleeper("a"))
    await asleep(shell, "a")
    held = shell.driver.hold_wake("a")
    waiting = request_for(shell, "a")
    await shell.reach("a", State.WAKING)
    shell.driver.running_now.pop("a")
    shell.driver.wake_outcomes["a"].append(SleepModeError(SleepStep.WAKE, "POST /wake_up failed: connection reset"))
    shell.driver.emit(ContainerEvent(ContainerChange.DIED, "a", "a-1", "1"))
    held.set_result(None)  # the wake call fails too, after the death: nothing more to do for it
    await waiting
    assert shell.supervisor.state("a") is State.READY and shell.driver.up_calls("a") == 2
    slot = shell.supervisor.records["a"].slot
    assert slot.failures == 1 and slot.wake_failures == 1
    assert "while waking" in shell.kinds(ModelStateChanged, state="failed")[0].error
    await gate_is(nginx, NOTHING)
