"""The shell over two hosts, each with its own fake driver: starts go to the host placement chose, each
host's events and connection are its own, a lost host marks its models down while the other serves."""

import asyncio
from pathlib import Path

import pytest

from tests.unit.shell_fakes import FakeClock, FakeDriver, open_shell, until
from tests.unit.test_config_ray import config as ray_config
from tests.unit.test_config_ray import huge
from tests.unit.test_supervisor import ready, request_for
from waker.config.schema import Config, parse_config
from waker.core.driver import ContainerChange, ContainerEvent
from waker.core.events import ContainerAdopted, HostBack, HostLost
from waker.core.lifecycle import State, StopReason
from waker.errors import RequestRefused
from waker.shell.events import EventBus
from waker.shell.fleet import Fleet
from waker.shell.hosts import SETTLE_SECONDS
from waker.shell.supervisor import Supervisor


def two_hosts(*models: dict) -> Config:
    raw = {
        "host": [
            {"name": "one", "gpu_capacity": 1.0},
            {"name": "two", "docker_host": "ssh://two", "address": "10.0.0.2", "gpu_capacity": 1.0},
        ],
        "model": [{"image": "fake:test", "gpu_memory": 0.6, **m} for m in models],
    }
    return parse_config(raw, Path("/nonexistent/models.toml"))


async def open_two(*models: dict, running_two: dict[str, str] | None = None):
    one, two = FakeDriver(), FakeDriver(running_now=dict(running_two or {}))
    shell = await open_shell(two_hosts(*models), hosts={"one": one, "two": two})
    return shell, one, two


async def test_each_model_starts_through_the_driver_of_the_host_it_was_placed_on():
    shell, one, two = await open_two({"id": "a"}, {"id": "b"})
    await ready(shell, "a")
    await ready(shell, "b")  # does not fit beside a on one: placed on two, a keeps serving
    assert (one.up_calls("a"), two.up_calls("a"), one.up_calls("b"), two.up_calls("b")) == (1, 0, 0, 1)
    assert shell.supervisor.records["b"].slot.hosts == ("two",) and shell.supervisor.host_of("b") == "two"
    assert shell.supervisor.state("a") is State.READY
    shell.supervisor.stop("b", StopReason.MANUAL)
    await shell.reach("b", State.STOPPED)
    assert two.count("down", "b") == 1 and one.count("down", "b") == 0
    await shell.supervisor.close()


async def test_a_lost_host_marks_its_models_down_and_the_other_host_keeps_serving():
    shell, one, two = await open_two({"id": "a", "host": "one"}, {"id": "b", "host": "two"})
    await ready(shell, "a")
    await ready(shell, "b")
    two.lose("ssh: connect to host two port 22: No route to host")
    assert shell.supervisor.state("b") is State.STOPPED and shell.supervisor.state("a") is State.READY
    assert shell.kinds(HostLost, host="two", models=("b",))
    assert shell.supervisor.docker_error is None  # one still answers: requests are not refused at the door
    assert shell.supervisor.hosts.down() == {"two": "ssh: connect to host two port 22: No route to host"}
    with pytest.raises(RequestRefused) as refused:
        await request_for(shell, "b")
    assert refused.value.status == 503 and refused.value.code == "host_unavailable"
    assert "host 'two' is down" in refused.value.message
    await ready(shell, "a")
    two.lose("still unreachable")  # the reconnect loop's later failures are not news
    assert len(shell.kinds(HostLost)) == 1
    await two.reconnect()  # b's container ran on: found in the listing, adopted, not restarted
    await shell.reach("b", State.READY)
    assert shell.kinds(HostBack, host="two") and two.up_calls("b") == 1
    assert shell.kinds(ContainerAdopted, model="b", hosts=("two",))
    await shell.supervisor.close()


async def test_no_request_is_served_only_when_every_host_is_down():
    shell, one, two = await open_two({"id": "a"})
    one.lose("gone one")
    two.lose("gone two")
    assert shell.supervisor.docker_error == "host 'one': gone one; host 'two': gone two"
    await one.reconnect()
    assert shell.supervisor.docker_error is None
    await shell.supervisor.close()


async def test_a_death_reported_by_another_host_is_an_old_container_s():
    shell, one, two = await open_two({"id": "a", "host": "two"})
    await ready(shell, "a")
    one.emit(ContainerEvent(ContainerChange.DIED, "a", "old-container-on-one", "137"))
    assert shell.supervisor.state("a") is State.READY
    two.emit(ContainerEvent(ContainerChange.DIED, "a", two.running_now["a"], "137"))
    assert shell.supervisor.state("a") is State.FAILED
    assert "exited with code 137 while serving on host 'two'" in shell.supervisor.records["a"].slot.last_error
    await shell.supervisor.close()


async def test_containers_found_running_on_a_host_are_adopted_there():
    shell, one, two = await open_two({"id": "a"}, running_two={"a": "a-on-two"})
    await shell.reach("a", State.READY)
    assert shell.supervisor.records["a"].slot.hosts == ("two",)
    assert two.calls[0] == ("adopt", "a", "a-on-two") and not one.calls
    await shell.supervisor.close()


async def test_until_every_host_has_answered_or_failed_once_nothing_is_decided():
    class Silent(FakeDriver):  # its engine neither answers nor fails yet (an ssh connect still trying)
        async def follow(self, on_event, on_connect, on_lost):
            self._on_event, self._on_connect, self._on_lost = on_event, on_connect, on_lost
            await asyncio.Event().wait()

    one, two = FakeDriver(), Silent()
    supervisor = Supervisor(
        two_hosts({"id": "a", "keep_warm": True}), Fleet({"one": one, "two": two}), EventBus(), FakeClock()
    )
    await supervisor.open()
    await until(lambda: one._on_connect is not None and two._on_lost is not None, "both follows")
    supervisor.reconcile()
    assert supervisor.state("a") is State.STOPPED and not one.calls
    two.lose("connection timed out")
    await until(lambda: supervisor.state("a") is State.READY, "the keep_warm start on the host that answers")
    assert one.up_calls("a") == 1
    await supervisor.close()


async def test_a_host_that_neither_answers_nor_fails_holds_the_first_decisions_only_a_few_seconds():
    class Silent(FakeDriver):  # an ssh:// host that is off: the connect hangs for minutes
        async def follow(self, on_event, on_connect, on_lost):
            self._on_connect = on_connect
            await asyncio.Event().wait()

    one, two, clock = FakeDriver(), Silent(), FakeClock()
    supervisor = Supervisor(
        two_hosts({"id": "a", "keep_warm": True}), Fleet({"one": one, "two": two}), EventBus(), clock
    )
    await supervisor.open()
    await until(lambda: one._on_connect is not None and two._on_connect is not None, "both follows")
    assert supervisor.state("a") is State.STOPPED
    clock.advance(SETTLE_SECONDS)
    await until(lambda: supervisor.state("a") is State.READY, "the keep_warm start on the host that answered")
    assert "did not answer within 10 s" in supervisor.hosts.down()["two"]
    await two.reconnect()
    assert not supervisor.hosts.down()
    await supervisor.close()


async def test_a_copy_found_on_a_host_that_comes_back_is_stopped_when_the_model_runs_elsewhere_now():
    shell, one, two = await open_two({"id": "c"})
    one.lose("power cut")  # c is placed on two
    await ready(shell, "c")
    await one.reconnect()
    on_two = shell.supervisor.records["c"].container
    assert two.up_calls("c") == 1 and on_two is not None
    two.lose("cable pulled")  # its container runs on, unseen
    assert shell.supervisor.state("c") is State.STOPPED
    await ready(shell, "c")  # two is down: placed on one
    assert shell.supervisor.records["c"].slot.hosts == ("one",)
    await two.reconnect()
    await until(lambda: ("down", "c", on_two) in two.calls, "the stray copy on two stopped")
    assert shell.supervisor.state("c") is State.READY and shell.supervisor.records["c"].slot.hosts == ("one",)
    await shell.supervisor.close()


async def test_a_model_over_two_hosts_runs_on_the_one_pair_made_of_them():
    one, two, pair = FakeDriver(), FakeDriver(), FakeDriver()
    made: list[tuple[str, str]] = []

    def make_pair(head: str, worker: str) -> FakeDriver:
        made.append((head, worker))
        return pair

    config = ray_config(huge(gpu_memory=0.8))
    shell = await open_shell(config, hosts={"spark1": one, "spark2": two}, pair=make_pair)
    await ready(shell, "huge")
    assert shell.supervisor.records["huge"].slot.hosts == ("spark1", "spark2")
    assert pair.up_calls("huge") == 1 and one.up_calls("huge") == two.up_calls("huge") == 0
    shell.control.stop_by_hand("huge")
    await shell.reach("huge", State.STOPPED)
    await ready(shell, "huge")
    assert pair.count("down", "huge") == 1 and pair.up_calls("huge") == 2
    assert made == [("spark1", "spark2")]  # made once, on first use, and kept
    await shell.supervisor.close()


def test_a_fleet_without_a_pair_factory_refuses_a_model_over_two_hosts():
    fleet = Fleet({"one": FakeDriver(), "two": FakeDriver()})
    assert fleet.of(("two",)) is fleet.drivers["two"] and fleet.of(()) is fleet.drivers["one"]
    with pytest.raises(ValueError, match="this waker runs no model over two hosts"):
        fleet.of(("one", "two"))
