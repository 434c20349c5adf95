"""Other workloads (`[[external]]`): the config's entries, and their policies carried out by the shell
over a fake driver: a `block` workload refuses starts and wakes, a `pause` one is paused for a start
and unpaused once its models are down, an `observe` one is only shown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.shell_fakes import FakeDriver, open_shell, until
from tests.unit.test_supervisor_memory import Meminfo
from waker.config.externals import ExternalConfig, ExternalPolicy
from waker.config.schema import parse_config
from waker.core.driver import ContainerChange, ContainerEvent
from waker.core.externals import ExternalContainer
from waker.core.lifecycle import State, StopReason
from waker.core.memory import ContainerMemory
from waker.errors import ConfigError, RequestRefused


def config_with(*externals: dict, models=({"id": "a"},)):
    entries = [{"image": "fake:test", "gpu_memory": 0.5, **m} for m in models]
    return parse_config({"model": entries, "external": list(externals)}, Path("/etc/waker/models.toml"))


def running(external: ExternalConfig, name: str, paused: bool = False) -> ExternalContainer:
    return ExternalContainer(f"{name}-id", name, external, paused)


def test_entries_name_their_containers_by_label_or_by_name():
    config = config_with(
        {"name": "comfyui", "label": "com.example.app=comfyui", "policy": "pause"},
        {"name": "jupyter", "container": "jupyter"},
    )
    comfy, jupyter = config.externals
    assert comfy == ExternalConfig("comfyui", "com.example.app=comfyui", "", ExternalPolicy.PAUSE)
    assert jupyter.policy is ExternalPolicy.OBSERVE  # the default
    assert comfy.matches("anything", {"com.example.app": "comfyui"}) and not comfy.matches("comfyui", {})
    assert jupyter.matches("/jupyter", {}) and not jupyter.matches("jupyter-2", {})


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"name": "x"}, "give 'label' (\"key=value\") or 'container' (a name), one of the two"),
        ({"name": "x", "label": "a=b", "container": "c"}, "one of the two"),
        ({"name": "x", "label": "just-a-key"}, 'expected a Docker label as "key=value"'),
        ({"name": "x", "container": "has space"}, "expected a Docker container name"),
        ({"name": "x", "container": "c", "policy": "kill"}, "field 'policy'"),
        ({"label": "a=b"}, "[[external]] #1: field 'name' is required"),
        ({"name": "x", "container": "c", "image": "i"}, "unknown field 'image'"),
    ],
)
def test_a_bad_entry_says_what_is_wrong(entry, problem):
    with pytest.raises(ConfigError) as refused:
        config_with(entry)
    assert problem in str(refused.value)


def test_names_are_unique():
    with pytest.raises(ConfigError, match="another \\[\\[external\\]\\] has this name"):
        config_with({"name": "x", "container": "a"}, {"name": "x", "container": "b"})


async def test_a_block_workload_refuses_starts_while_it_runs_and_nothing_starts():
    config = config_with({"name": "comfyui", "container": "comfyui", "policy": "block"})
    shell = await open_shell(config)
    shell.driver.external_containers["c1"] = running(config.externals[0], "comfyui")
    with pytest.raises(RequestRefused) as refused:
        await shell.supervisor.acquire(config.model("a"))
    assert (refused.value.status, refused.value.code, refused.value.retry_after) == (429, "external_busy", 30)
    assert (
        "'comfyui' ([[external]] 'comfyui')" in refused.value.message and "policy is 'block'" in refused.value.message
    )
    assert shell.driver.up_calls("a") == 0 and shell.supervisor.state("a") is State.STOPPED
    del shell.driver.external_containers["c1"]  # it stopped
    await shell.supervisor.acquire(config.model("a"))
    assert shell.supervisor.state("a") is State.READY


async def test_a_pause_workload_is_paused_for_a_start_and_unpaused_once_its_models_are_down():
    config = config_with(
        {"name": "comfyui", "label": "app=comfyui", "policy": "pause"},
        {"name": "notes", "container": "notes"},  # observe: never touched
        models=({"id": "a", "gpu_memory": 0.3}, {"id": "b", "gpu_memory": 0.3}),
    )
    shell = await open_shell(config)
    comfy, notes = config.externals
    shell.driver.external_containers = {c.id: c for c in (running(comfy, "comfyui"), running(notes, "notes"))}
    await shell.supervisor.acquire(config.model("a"))
    assert shell.driver.calls.index(("pause", "comfyui")) < shell.driver.calls.index(("up", "a"))  # before
    await shell.supervisor.acquire(config.model("b"))  # it stays paused for b too
    assert [c for c in shell.driver.calls if c[0] in ("pause", "unpause")] == [("pause", "comfyui")]
    shell.supervisor.stop("a", StopReason.MANUAL)
    await shell.reach("a", State.STOPPED)
    assert shell.driver.external_containers["comfyui-id"].paused  # b still runs
    shell.supervisor.stop("b", StopReason.MANUAL)
    await shell.reach("b", State.STOPPED)
    await until(lambda: ("unpause", "comfyui") in shell.driver.calls, "comfyui unpaused")
    assert not shell.driver.external_containers["comfyui-id"].paused
    assert not any(c[1:] == ("notes",) for c in shell.driver.calls)


async def test_the_workloads_are_shown_with_their_containers_and_memory():
    config = config_with({"name": "comfyui", "container": "comfyui"})
    shell = await open_shell(config)
    shell.driver.external_containers["c1"] = running(config.externals[0], "comfyui")
    shell.driver.memory_in_use["comfyui-id"] = ContainerMemory(3 * 2**30, None)
    assert shell.supervisor.externals is not None
    (shown,) = await shell.supervisor.externals.status()
    assert shown == {
        "name": "comfyui",
        "label": "",
        "container": "comfyui",
        "policy": "observe",
        "error": None,
        "containers": [{"id": "comfyui-id", "name": "comfyui", "paused": False, "memory_bytes": 3 * 2**30}],
    }


async def test_a_restarted_waker_unpauses_what_it_had_paused_once_its_models_are_down():
    config = config_with(
        {"name": "comfyui", "label": "app=comfyui", "policy": "pause"},
        models=({"id": "a", "gpu_memory": 0.3}, {"id": "b", "gpu_memory": 0.3}),
    )
    comfy = config.externals[0]
    machine = Meminfo(20)
    driver = FakeDriver()
    driver.running_now["b"] = "b-0"  # b runs on: the waker restarts beside it
    first, second = running(comfy, "first", paused=True), running(comfy, "second", paused=True)
    driver.external_containers = {first.id: first, second.id: second}
    machine.kept_paused = {first.id: ["a"], second.id: ["a", "b"], "gone-id": ["a"]}
    shell = await open_shell(config, driver, memory=machine)
    await until(lambda: ("unpause", "first") in driver.calls, "what was paused for 'a' alone, unpaused")
    assert driver.external_containers["second-id"].paused  # still paused for b, which runs
    await until(lambda: machine.kept_paused == {"second-id": ["b"]}, "what is still paused, kept")
    await shell.reach("b", State.READY)
    shell.supervisor.stop("b", StopReason.MANUAL)
    await until(lambda: ("unpause", "second") in driver.calls, "unpaused once b is down")
    assert machine.kept_paused == {}


async def test_a_keep_warm_restart_is_held_off_while_a_block_workload_runs_and_tried_again_after():
    config = config_with(
        {"name": "comfyui", "container": "comfyui", "policy": "block"}, models=({"id": "a", "keep_warm": True},)
    )
    shell = await open_shell(config)
    await shell.reach("a", State.READY)  # keep_warm: up without a request
    shell.driver.external_containers["c1"] = running(config.externals[0], "comfyui")
    shell.driver.emit(ContainerEvent(ContainerChange.DIED, "a", "a-1", "137"))  # a crash: it would restart at once
    await until(lambda: shell.supervisor.state("a") is State.STOPPED, "the restart called off")
    assert shell.driver.up_calls("a") == 1  # only its first start: no container for the restart
    assert shell.supervisor.records["a"].slot.failures == 1  # the crash counts; the call-off does not
    listed = shell.driver.calls.count(("externals",))
    shell.clock.advance(29)
    await asyncio.sleep(0)
    assert shell.driver.calls.count(("externals",)) == listed  # held off: not even asked
    shell.clock.advance(1)  # its Retry-After is over: asked again, still blocked
    await until(lambda: shell.driver.calls.count(("externals",)) > listed, "the workloads listed again")
    await until(lambda: shell.supervisor.state("a") is State.STOPPED, "called off again")
    assert shell.driver.up_calls("a") == 1
    del shell.driver.external_containers["c1"]  # comfyui stopped
    shell.clock.advance(30)
    await shell.reach("a", State.READY)
    assert shell.driver.up_calls("a") == 2
