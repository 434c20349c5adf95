"""Manual control (stop, pin, unload, live reload) run on the real shell with a fake driver and clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.unit.shell_fakes import FakeDriver, FakeNginx, make_config, open_shell, until
from tests.unit.test_supervisor import begin, ready, request_for
from waker.config.schema import load_config
from waker.core.events import ConfigReloaded, ModelPinned, ModelStopped, ModelUnpinned, RequestQueued
from waker.core.lifecycle import State, StopReason
from waker.errors import AdminError, ConfigError, NginxError, RequestRefused, StartError
from waker.shell.manual_control import StopOutcome

# ---- stop by hand -------------------------------------------------------------------------------


async def test_stop_by_hand_in_each_state():
    shell = await open_shell(make_config({"id": "a"}, {"id": "b"}))
    control = shell.control
    assert control.stop_by_hand("a") is StopOutcome.ALREADY_STOPPED
    await ready(shell, "a")
    assert control.stop_by_hand("a") is StopOutcome.STOPPING
    assert control.stop_by_hand("a") is StopOutcome.ALREADY_STOPPING
    await shell.reach("a", State.STOPPED)
    assert shell.kinds(ModelStopped, model="a", reason="manual")
    shell.driver.hold("b")
    request_for(shell, "b")
    await shell.reach("b", State.STARTING)
    with pytest.raises(AdminError, match="is starting"):
        control.stop_by_hand("b")


async def test_a_busy_model_is_only_stopped_with_force_and_the_reason_is_kept():
    shell = await open_shell(make_config({"id": "a"}))
    await ready(shell, "a")
    begin(shell, "a", b"r1")
    with pytest.raises(AdminError, match="1 request\\(s\\) in flight"):
        shell.control.stop_by_hand("a")
    assert shell.supervisor.state("a") is State.READY
    assert shell.control.stop_by_hand("a", force=True, reason=StopReason.CLIENT) is StopOutcome.STOPPING
    await until(lambda: shell.kinds(ModelStopped, model="a", reason="client"), "the client's stop")


async def test_stopping_a_failed_model_clears_its_back_off():
    shell = await open_shell(make_config({"id": "a"}, max_start_failures=1, start_backoff="1h"))
    shell.driver.outcomes["a"].append(StartError(503, "model_exited", "boom"))
    with pytest.raises(RequestRefused):
        await request_for(shell, "a")
    assert shell.control.stop_by_hand("a") is StopOutcome.FAILURE_CLEARED
    assert shell.supervisor.state("a") is State.STOPPED
    assert shell.supervisor.records["a"].slot.failures == 0
    await ready(shell, "a")  # no back-off left


async def test_a_keep_warm_model_stopped_by_hand_stays_down_until_asked_for():
    shell = await open_shell(make_config({"id": "util", "keep_warm": True, "gpu_memory": 0.2}))
    await shell.reach("util", State.READY)
    shell.control.stop_by_hand("util")
    await shell.reach("util", State.STOPPED)
    shell.supervisor.reconcile()
    assert shell.supervisor.state("util") is State.STOPPED and shell.driver.up_calls("util") == 1
    await ready(shell, "util")  # a request resumes it
    assert not shell.supervisor.records["util"].slot.suspended


# ---- pin, unload --------------------------------------------------------------------------------


async def test_a_pinned_model_is_neither_idle_stopped_nor_evicted_until_unpinned():
    shell = await open_shell(
        make_config(
            {"id": "a", "gpu_memory": 0.6, "idle_timeout": "10s", "min_uptime": "0s"},
            {"id": "b", "gpu_memory": 0.6},
            on_busy="reject",
        )
    )
    await ready(shell, "a")
    shell.control.set_pinned("a", True)
    assert shell.kinds(ModelPinned, model="a")
    shell.clock.advance(60)
    assert shell.supervisor.state("a") is State.READY
    with pytest.raises(RequestRefused) as refused:
        await request_for(shell, "b")
    assert refused.value.status == 429 and "pinned" in refused.value.message
    shell.control.set_pinned("a", False)
    assert shell.kinds(ModelUnpinned, model="a")
    await shell.reach("a", State.STOPPED)  # long idle: stopped as soon as it is unpinned


async def test_unload_stops_what_runs_except_pinned_and_busy_models():
    shell = await open_shell(
        make_config(
            {"id": "a", "gpu_memory": 0.3},
            {"id": "b", "gpu_memory": 0.3},
            {"id": "c", "gpu_memory": 0.3},
            {"id": "d", "gpu_memory": 0.05},
        )
    )
    for model_id in ("a", "b", "c"):
        await ready(shell, model_id)
    shell.control.set_pinned("a", True)
    begin(shell, "b", b"r1")
    outcome = shell.control.unload()
    assert outcome["c"] == StopOutcome.STOPPING
    assert outcome["b"].startswith("skipped:") and "in flight" in outcome["b"]
    assert "a" not in outcome and "d" not in outcome
    assert shell.control.unload(force=True) == {"b": StopOutcome.STOPPING}  # c is stopping already


# ---- live reload --------------------------------------------------------------------------------


def write(
    path: Path,
    models: list[dict[str, Any]],
    waker: dict[str, Any] | None = None,
    hosts: list[dict[str, Any]] | None = None,
) -> None:
    raw: dict[str, Any] = {"model": [{"image": "fake:test", "gpu_memory": 0.3, **m} for m in models]}
    if waker:
        raw["waker"] = waker
    if hosts:
        raw["host"] = hosts
    path.write_text(tomli_w.dumps(raw))


async def reload_shell(tmp_path: Path, models: list[dict[str, Any]], nginx: FakeNginx | None = None):
    path = tmp_path / "models.toml"
    write(path, models)
    return path, await open_shell(load_config(path), nginx=nginx)


async def test_reload_adds_changes_and_removes_models_running_ones_included(tmp_path):
    nginx = FakeNginx()
    path, shell = await reload_shell(tmp_path, [{"id": "a"}, {"id": "b"}, {"id": "gone"}], nginx)
    await ready(shell, "a")
    await ready(shell, "gone")
    write(path, [{"id": "a", "gpu_memory": 0.4, "idle_timeout": "5m"}, {"id": "b"}, {"id": "new"}])
    change = await shell.control.reload()
    assert change.as_dict() == {"added": ["new"], "changed": ["a"], "removed": ["gone"]}
    assert nginx.reloaded and nginx.reloaded[0] is shell.supervisor.config
    assert shell.supervisor.state("a") is State.READY  # changed limits, same run
    assert shell.supervisor.records["a"].slot.gpu_memory == 0.4
    assert shell.supervisor.records["a"].slot.idle_timeout == 300
    await until(lambda: "gone" not in shell.supervisor.records, "the removed model stopped and forgotten")
    assert shell.kinds(ModelStopped, model="gone", reason="removed")
    await ready(shell, "new")
    assert shell.kinds(ConfigReloaded, added=("new",))


async def test_a_reload_that_changes_what_a_model_runs_clears_its_back_off(tmp_path):
    """The back-off says the old container failed; a new image (or command, env, start_timeout...)
    deserves a start at the next request. A change of limits alone keeps it."""
    path = tmp_path / "models.toml"

    def write_models(image: str, idle_timeout: str = "10m") -> None:
        scheduler = {"max_start_failures": 1, "start_backoff": "1h"}
        model = {"id": "a", "image": image, "gpu_memory": 0.3, "idle_timeout": idle_timeout}
        path.write_text(tomli_w.dumps({"scheduler": scheduler, "model": [model]}))

    write_models("fake:broken")
    shell = await open_shell(load_config(path))
    shell.driver.outcomes["a"].append(StartError(503, "model_exited", "exited with code 1 while loading"))
    with pytest.raises(RequestRefused):
        await request_for(shell, "a")
    with pytest.raises(RequestRefused, match="exited with code 1"):  # in back-off: no start
        await request_for(shell, "a")
    write_models("fake:broken", idle_timeout="20m")
    change = await shell.control.reload()
    assert change.changed == ("a",) and change.renewed == ()
    assert shell.supervisor.state("a") is State.FAILED  # limits only: still in back-off
    write_models("fake:fixed", idle_timeout="20m")
    assert (await shell.control.reload()).renewed == ("a",)
    assert shell.supervisor.state("a") is State.STOPPED and shell.supervisor.records["a"].slot.failures == 0
    await ready(shell, "a")
    assert shell.driver.up_calls("a") == 2


async def test_a_reload_that_cannot_apply_live_changes_nothing(tmp_path):
    nginx = FakeNginx()
    path, shell = await reload_shell(tmp_path, [{"id": "a"}, {"id": "b"}], nginx)
    await ready(shell, "a")
    await ready(shell, "b")
    begin(shell, "b", b"r1")
    before = shell.supervisor.config
    write(path, [{"id": "a", "host_port": 19999}], waker={"name": "other"})
    with pytest.raises(AdminError) as refused:
        await shell.control.reload()
    message = refused.value.message
    assert "[waker] name changed" in message
    assert "model 'a' runs at" in message and "keep its position" in message
    assert "model 'b' is removed but is busy" in message
    assert shell.supervisor.config is before and not nginx.reloaded


async def test_a_reload_may_change_a_host_s_budget_but_not_the_hosts(tmp_path):
    path = tmp_path / "models.toml"
    hosts = [{"name": "one", "gpu_capacity": 1.0}, {"name": "two", "docker_host": "ssh://two", "address": "10.0.0.2"}]
    write(path, [{"id": "a"}], hosts=hosts)
    shell = await open_shell(load_config(path), hosts={"one": FakeDriver(), "two": FakeDriver()})
    write(path, [{"id": "a"}], hosts=[{**hosts[0], "gpu_capacity": 0.5}, hosts[1]])
    await shell.control.reload()
    assert [b.capacity for b in shell.supervisor.policy.hosts] == [0.5, 1.0]
    memory = {"memory_floor": "6GiB", "memory_probe_image": "busybox:1"}  # read at each sample: live too
    write(path, [{"id": "a"}], hosts=[{**hosts[0], "gpu_capacity": 0.5}, {**hosts[1], **memory}])
    await shell.control.reload()
    assert shell.supervisor.config.hosts[1].memory_floor == 6 * 2**30
    before = shell.supervisor.config
    write(path, [{"id": "a"}], hosts=[hosts[0], {**hosts[1], "address": "10.0.0.3"}])
    with pytest.raises(AdminError) as refused:
        await shell.control.reload()
    assert "[[host]] entries changed" in refused.value.message and "restart the waker" in refused.value.message
    assert shell.supervisor.config is before


async def test_a_reload_nginx_refuses_leaves_the_supervisor_on_the_old_config(tmp_path):
    for nginx in (FakeNginx(refuse_check=True), FakeNginx(refuse_reload=True)):
        path, shell = await reload_shell(tmp_path, [{"id": "a"}], nginx)
        before = shell.supervisor.config
        write(path, [{"id": "a"}, {"id": "b"}])
        with pytest.raises(NginxError):
            await shell.control.reload()
        assert shell.supervisor.config is before and "b" not in shell.supervisor.records


async def test_a_reload_of_a_broken_file_changes_nothing(tmp_path):
    path, shell = await reload_shell(tmp_path, [{"id": "a"}])
    path.write_text("[[model]]\nid = 3\n")
    with pytest.raises(ConfigError):
        await shell.control.reload()
    assert [m.id for m in shell.supervisor.config.models] == ["a"]


async def test_waiters_of_a_removed_model_are_told_it_was_removed(tmp_path):
    path, shell = await reload_shell(tmp_path, [{"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6}])
    await ready(shell, "a")
    begin(shell, "a", b"r1")
    waiting = request_for(shell, "b")
    await until(lambda: shell.kinds(RequestQueued, model="b"), "b queued")
    write(path, [{"id": "a", "gpu_memory": 0.6}])
    await shell.control.reload()
    with pytest.raises(RequestRefused, match="was removed"):
        await waiting
    assert "b" not in shell.supervisor.records
