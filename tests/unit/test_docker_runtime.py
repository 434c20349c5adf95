"""The Docker engine as the waker sees it (`DockerRuntime`), against a fake engine speaking Docker's API:
only its own stack's containers are listed and acted on, and every failure of a call is a DockerError
saying what was being done (tests/e2e run the same calls against a real engine)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.unit.fake_docker import STACK, STDERR, FakeDocker, Pull, managed
from tests.unit.test_image_pull import STREAM
from waker.config.externals import ExternalConfig, ExternalPolicy
from waker.config.hosts import DockerEndpoint, DockerScheme, TlsFiles
from waker.config.ray import RayNode
from waker.core.image_pull import PullProgress
from waker.core.memory import ContainerMemory, HostMemory
from waker.docker import memory_probe
from waker.docker import runtime as runtime_module
from waker.docker.runtime import DockerRuntime
from waker.docker.spec import LABEL_MANAGED, LABEL_MODEL, LABEL_RAY_NODE, LABEL_ROLE, LABEL_STACK, ROLE_GATEWAY
from waker.errors import DockerError, NotManaged

MIB = 1024**2


def strangers(docker: FakeDocker) -> list:
    """Containers the waker of stack "unit" did not create: a user's, and another stack's."""
    return [
        docker.add("postgres", {"Image": "postgres:16", "Labels": {}}, running=True),
        docker.add("other-alpha", managed("alpha", stack="other"), running=True),
    ]


async def test_only_this_stacks_managed_containers_are_listed_with_what_docker_says_of_them(docker, runtime):
    docker.add("unit-alpha", managed("alpha", **{"io.waker.spec-hash": "aaaa"}), running=True, image_id="sha256:a")
    crashed = docker.add("unit-beta", managed("beta"))
    crashed.starts, crashed.exit_code, crashed.error = 1, 139, "OCI runtime exec failed"
    docker.add("unit-huge-w", managed("huge", **{LABEL_RAY_NODE: "worker"}), running=True)
    docker.add("unit-odd", managed("odd", **{LABEL_RAY_NODE: "sidecar"}))
    strangers(docker)

    listed = {info.name: info for info in await runtime.managed_containers()}

    assert sorted(listed) == ["unit-alpha", "unit-beta", "unit-huge-w", "unit-odd"]
    alpha, beta, worker = listed["unit-alpha"], listed["unit-beta"], listed["unit-huge-w"]
    assert (alpha.model_id, alpha.spec_hash, alpha.image_id, alpha.running) == ("alpha", "aaaa", "sha256:a", True)
    assert (beta.running, beta.exit_code, beta.error) == (False, 139, "OCI runtime exec failed")
    assert worker.ray_node is RayNode.WORKER and not worker.serves and alpha.serves
    assert listed["unit-odd"].ray_node is None  # a label value the waker does not know is no Ray node
    query = docker.calls[0].query
    assert query["all"] == "1"  # stopped containers too: a crashed model's container is still its
    assert '"io.waker.managed=true"' in query["filters"] and f'"io.waker.stack={STACK}"' in query["filters"]


async def test_find_tells_a_models_own_container_from_its_ray_worker_on_the_same_host(docker, runtime):
    head = docker.add("unit-huge", managed("huge", **{LABEL_RAY_NODE: "head"}), running=True)
    worker = docker.add("unit-huge-w", managed("huge", **{LABEL_RAY_NODE: "worker"}))
    docker.add("other-huge", managed("huge", stack="other"), running=True)

    assert (await runtime.find("huge")).id == head.id
    assert (await runtime.find("huge", worker=True)).id == worker.id
    assert await runtime.find("tiny") is None


async def test_containers_the_waker_did_not_create_are_never_touched(docker, runtime):
    docker.networks["egress"] = set()
    for stranger in strangers(docker):
        for action in (
            runtime.start(stranger.id),
            runtime.stop(stranger.id, 10),
            runtime.remove(stranger.id),
            runtime.connect("egress", stranger.id),
        ):
            with pytest.raises(NotManaged, match=f"container {stranger.name} is not managed by waker stack 'unit'"):
                await action
        assert stranger.running
    assert docker.actions("start", "stop", "kill", "remove", "connect") == []
    assert docker.networks["egress"] == set()


async def test_an_engine_that_is_not_there_is_a_docker_error_saying_so():
    runtime = DockerRuntime(STACK, "unix:///nonexistent/docker.sock")
    try:
        with pytest.raises(DockerError, match=r"cannot list containers: Cannot connect to Docker Engine via unix://"):
            await runtime.managed_containers()
    finally:
        await runtime.close()


async def test_an_engine_that_goes_away_mid_answer_is_a_docker_error_saying_so(docker, runtime):
    alpha = docker.add("unit-alpha", managed("alpha"), running=True)
    docker.cut("inspect")
    with pytest.raises(DockerError, match=f"cannot inspect container {alpha.id[:12]}: the Docker engine is not reach"):
        await runtime.inspect(alpha.id)
    assert (await runtime.inspect(alpha.id)).running  # the next call gets through again


async def test_an_images_id_is_none_when_the_host_lacks_it_and_other_failures_are_errors(docker, runtime):
    docker.images["img:1"] = "sha256:one"
    assert await runtime.image_id("img:1") == "sha256:one"
    assert await runtime.image_id("reg.io/team/img:2") is None
    docker.refuse("image", 500, "layer does not exist")
    with pytest.raises(DockerError, match="cannot inspect image 'img:1': layer does not exist"):
        await runtime.image_id("img:1")


async def test_a_pull_reports_progress_as_docker_streams_it_and_sends_the_credentials(docker, runtime):
    docker.registry["reg.io/team/img:2"] = Pull("sha256:two", STREAM)
    seen: list[PullProgress] = []

    await runtime.pull("reg.io/team/img:2", {"username": "me", "password": "pw"}, seen.append)

    assert seen[-1] == PullProgress("reg.io/team/img:2", 2, 2, 4000, 4000) and len(seen) == len(STREAM) + 1
    (pull,) = [call for call in docker.calls if call.action == "pull"]
    assert pull.auth == {"username": "me", "password": "pw", "serveraddress": "reg.io"}
    assert await runtime.image_id("reg.io/team/img:2") == "sha256:two"


async def test_a_refused_pull_is_a_docker_error_in_the_registrys_own_words(docker, runtime):
    docker.registry["reg.io/team/img:2"] = Pull("sha256:two", STREAM[:3], error="denied: requested access is denied")
    with pytest.raises(DockerError, match="cannot pull image 'reg.io/team/img:2': denied: requested access is denied"):
        await runtime.pull("reg.io/team/img:2")
    with pytest.raises(DockerError, match="cannot pull image 'reg.io/team/nope:1': manifest for .* not found"):
        await runtime.pull("reg.io/team/nope:1")
    assert await runtime.image_id("reg.io/team/img:2") is None


async def test_create_sends_the_spec_under_the_name_and_a_taken_name_is_an_error(docker, runtime):
    docker.images["img:1"] = "sha256:one"
    body = managed("alpha")
    created = await runtime.create("unit-alpha", body)
    assert docker.container("unit-alpha").id == created and docker.calls[-1].body == body
    assert docker.calls[-1].query == {"name": "unit-alpha"}
    with pytest.raises(DockerError, match="cannot create container 'unit-alpha': Conflict. The container name"):
        await runtime.create("unit-alpha", body)


async def test_stop_gives_docker_whole_seconds_and_is_quiet_when_there_is_nothing_to_stop(docker, runtime):
    alpha = docker.add("unit-alpha", managed("alpha"), running=True)
    await runtime.stop(alpha.id, 2.6)
    assert not alpha.running and docker.calls[-1].query == {"t": "3"}
    await runtime.stop(alpha.id, 2.6)  # already stopped: Docker answers 304
    docker.refuse("stop", 404, f"No such container: {alpha.id}")  # removed between the inspect and the stop
    await runtime.stop(alpha.id, -5)
    assert docker.calls[-1].query == {"t": "0"}
    docker.refuse("stop", 500, "tried to kill container, but did not receive an exit event")
    with pytest.raises(DockerError, match=f"cannot stop container {alpha.id[:12]}: tried to kill"):
        await runtime.stop(alpha.id, 10)


async def test_start_and_remove_act_on_the_container_and_say_why_when_docker_refuses(docker, runtime):
    alpha = docker.add("unit-alpha", managed("alpha"))
    docker.refuse("start", 500, "failed to set up container networking: network models not found")
    with pytest.raises(DockerError, match=f"cannot start container {alpha.id[:12]}: failed to set up container netw"):
        await runtime.start(alpha.id)
    await runtime.start(alpha.id)
    assert alpha.running
    await runtime.remove(alpha.id)  # forced: a running container goes too
    assert docker.calls[-1].query == {"force": "1"} and alpha.id not in docker.containers
    assert docker.actions("start", "remove") == [("start", "unit-alpha")] * 2 + [("remove", "unit-alpha")]


async def test_connect_joins_a_network_that_exists_and_names_one_that_does_not(docker, runtime):
    alpha = docker.add("unit-alpha", managed("alpha"))
    docker.networks["egress"] = set()
    await runtime.connect("egress", alpha.id)
    assert docker.networks["egress"] == {alpha.id} and docker.calls[-1].body == {"Container": alpha.id}
    with pytest.raises(DockerError, match=f"cannot connect container {alpha.id[:12]} to network 'gone': network gone"):
        await runtime.connect("gone", alpha.id)


def gateway(docker: FakeDocker, name: str, hostname: str, running: bool = True):
    return docker.add(name, {"Image": "waker:1", "Labels": {LABEL_ROLE: ROLE_GATEWAY}}, running, hostname=hostname)


async def test_the_gateway_is_the_running_one_whose_hostname_this_process_shares(docker, runtime):
    ours = gateway(docker, "unit-gateway", socket.gethostname())
    gateway(docker, "other-gateway", "another-namespace")
    gateway(docker, "old-gateway", socket.gethostname(), running=False)
    assert await runtime.gateway_container() == ours.id
    gateway(docker, "twin-gateway", socket.gethostname())
    with pytest.raises(DockerError, match="2 running container.s. labelled io.waker.role=gateway with this cont"):
        await runtime.gateway_container()


async def test_without_a_gateway_next_to_it_the_waker_says_how_to_run_it(docker, runtime):
    gateway(docker, "other-gateway", "another-namespace")
    with pytest.raises(DockerError, match="no running container.* network_mode: service:gateway"):
        await runtime.gateway_container()


async def test_a_reload_is_a_sighup_and_only_ever_to_the_container_labelled_gateway(docker, runtime):
    ours = gateway(docker, "unit-gateway", socket.gethostname())
    model = docker.add("unit-alpha", managed("alpha"), running=True)
    await runtime.reload_gateway(ours.id)
    with pytest.raises(NotManaged, match=f"container {model.id[:12]} is not labelled io.waker.role=gateway"):
        await runtime.reload_gateway(model.id)
    assert [(c.target, c.query) for c in docker.calls if c.action == "kill"] == [("unit-gateway", {"signal": "HUP"})]
    assert ours.running and model.running


async def test_the_events_stream_is_open_on_entry_and_carries_this_stacks_containers_only(docker, runtime):
    async with runtime.event_stream() as events:
        assert docker.streams_open() == 1  # nothing that happens from here on is missed
        ours = docker.add("unit-alpha", managed("alpha"))
        docker.emit("start", ours)
        docker.emit("start", docker.add("other-alpha", managed("alpha", stack="other")))
        docker.emit("die", ours, exitCode="1")
        docker.end_events()
        seen = [(event["Action"], event["Actor"]["Attributes"].get("exitCode")) async for event in events]
    assert seen == [("start", None), ("die", "1")]
    (call,) = [c for c in docker.calls if c.action == "events"]
    assert call.body == {"type": ["container"], "label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={STACK}"]}


async def test_an_events_stream_cut_short_is_a_docker_error(docker, runtime):
    with pytest.raises(DockerError, match="the Docker events stream broke off: the Docker engine is not reachable"):
        async with runtime.event_stream() as events:
            docker.end_events(cut=True)
            async for _ in events:
                pass


async def test_an_events_stream_that_cannot_open_is_a_docker_error(docker, runtime):
    docker.refuse("events", 500, "too many open files")
    with pytest.raises(DockerError, match="cannot open the Docker events stream: too many open files"):
        async with runtime.event_stream():
            pass


async def test_following_logs_gives_the_tail_then_each_new_line_until_the_container_stops(docker, runtime):
    alpha = docker.add("unit-alpha", managed("alpha"), running=True)
    for n in range(5):
        docker.write_log(alpha, f"line {n}", stream=STDERR if n % 2 else 1)
    follow = runtime.follow_logs(alpha.id, tail=2)
    assert [await anext(follow), await anext(follow)] == ["line 3", "line 4"]
    docker.write_log(alpha, "INFO: Application startup complete.")
    assert await anext(follow) == "INFO: Application startup complete."
    docker.exit(alpha, 0)
    assert [line async for line in follow] == []
    assert docker.calls[-1].query == {"stdout": "1", "stderr": "1", "follow": "1", "tail": "2"}


async def test_following_logs_since_a_time_leaves_out_the_lines_before_it(docker, runtime):
    alpha = docker.add("unit-alpha", managed("alpha"), running=True)
    docker.write_log(alpha, "an earlier run", at=1000.0)
    docker.write_log(alpha, "Loading weights", at=2000.5)
    follow = runtime.follow_logs(alpha.id, since=2000.25)
    assert await anext(follow) == "Loading weights"
    assert docker.calls[-1].query["since"] == "2000.250000"
    docker.exit(alpha, 1)
    assert [line async for line in follow] == []


async def test_a_log_tail_is_the_last_lines_and_empty_when_docker_cannot_say(docker, runtime):
    alpha = docker.add("unit-alpha", managed("alpha"))
    for n in range(30):
        docker.write_log(alpha, f"line {n}")
    assert await runtime.logs_tail(alpha.id, 3) == "line 27\nline 28\nline 29"
    assert await runtime.logs_tail("0123456789ab") == ""  # the tail only decorates an error: never raises


async def test_unreadable_tls_files_name_the_host_keys_to_check(tmp_path: Path):
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    with pytest.raises(DockerError, match="cannot use the TLS files of tcp://spark2:2376: .*check tls_ca, tls_cert"):
        DockerRuntime(STACK, DockerEndpoint(DockerScheme.TCP, "tcp://spark2:2376", files))


async def test_a_container_without_a_model_label_is_reported_with_an_empty_model(docker, runtime):
    labels = {LABEL_MANAGED: "true", LABEL_STACK: STACK}
    bare = docker.add("unit-bare", {"Image": "img:1", "Labels": labels})
    info = await runtime.inspect(bare.id)
    assert (info.model_id, info.spec_hash, info.ray_node) == ("", "", None) and LABEL_MODEL not in bare.labels


async def test_a_containers_memory_is_what_docker_stats_shows_with_the_peak_where_cgroup_v1_keeps_one(docker, runtime):
    v1 = docker.add("unit-v1", managed("v1"), running=True)
    v1.memory_stats = {"usage": 900 * MIB, "max_usage": 1200 * MIB, "stats": {"total_cache": 100 * MIB}}
    v2 = docker.add("unit-v2", managed("v2"), running=True)
    v2.memory_stats = {"usage": 700 * MIB, "stats": {"file": 200 * MIB}}  # cgroup v2: no peak
    stopped = docker.add("unit-stopped", managed("stopped"), running=False)
    assert await runtime.memory_use(v1.id) == ContainerMemory(800 * MIB, 1200 * MIB)
    assert await runtime.memory_use(v2.id) == ContainerMemory(500 * MIB, None)
    assert await runtime.memory_use(stopped.id) is None
    docker.refuse("stats", 500, "stats unavailable")
    with pytest.raises(DockerError, match="cannot read container .*'s stats: .*stats unavailable"):
        await runtime.memory_use(v1.id)


async def test_external_workloads_are_found_by_label_or_name_and_only_a_pause_ones_container_is_paused(docker, runtime):
    comfy_entry = ExternalConfig("comfyui", "app=comfyui", "", ExternalPolicy.PAUSE)
    notes_entry = ExternalConfig("notes", "", "notebook", ExternalPolicy.OBSERVE)
    comfy = docker.add("comfy-1", {"Labels": {"app": "comfyui"}}, running=True)
    docker.add("notebook", {}, running=True)
    docker.add("unit-alpha", managed("alpha", app="comfyui"), running=True)  # ours: never theirs
    docker.add("stopped-comfy", {"Labels": {"app": "comfyui"}}, running=False)
    found = await runtime.externals((comfy_entry, notes_entry))
    assert sorted((c.name, c.external.name, c.paused) for c in found) == [
        ("comfy-1", "comfyui", False),
        ("notebook", "notes", False),
    ]
    (theirs,) = [c for c in found if c.name == "comfy-1"]
    await runtime.pause(theirs)
    assert comfy.paused and [c.paused for c in await runtime.externals((comfy_entry,))] == [True]
    await runtime.pause(theirs, unpause=True)
    assert not comfy.paused
    (notebook,) = [c for c in found if c.name == "notebook"]
    with pytest.raises(NotManaged, match="not one the waker may pause"):
        await runtime.pause(notebook)
    assert await runtime.externals(()) == []


# ---- a remote host's memory, through its engine ----------------------------------------------------


def probe_writes(docker: FakeDocker, probe, uptime: float, available_mib: int) -> None:
    """One reading, as the probe's script prints it."""
    for line in (
        f"uptime {uptime}",
        "MemTotal: 2048000 kB",
        "MemFree: 10240 kB",
        f"MemAvailable: {available_mib * 1024} kB",
    ):
        docker.write_log(probe, line)
    docker.write_log(probe, ".")


async def test_a_hosts_memory_is_read_by_a_probe_made_from_the_first_image_it_has_and_kept(docker, runtime):
    docker.images["vllm:2"] = "sha256:v2"
    docker.on_start = lambda container: probe_writes(docker, container, 100.0, 900)

    memory = await runtime.host_memory(("vllm:1", "vllm:2"))

    assert (memory.total, memory.available, memory.free) == (2048000 * 1024, 900 * MIB, 10 * MIB)
    probe = docker.container(memory_probe.probe_name(STACK))
    spec = probe.config
    assert spec["Image"] == "vllm:2" and spec["Entrypoint"][:2] == ["/bin/sh", "-c"]
    assert spec["User"] == "65534:65534" and spec["NetworkDisabled"] and spec["HostConfig"]["NetworkMode"] == "none"
    assert spec["HostConfig"]["CapDrop"] == ["ALL"] and spec["HostConfig"]["ReadonlyRootfs"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in spec["Env"]  # never a GPU, whatever runtime the engine uses
    assert probe.labels == {memory_probe.LABEL_PROBE: STACK}  # never listed or acted on as a model's container
    assert await runtime.managed_containers() == []
    probe_writes(docker, probe, 100.5, 800)
    assert (await runtime.host_memory(("vllm:1", "vllm:2"))).available == 800 * MIB
    assert docker.actions("create") == [("create", probe.name)]  # made once
    assert await runtime.host_memory(()) == HostMemory(2048000 * 1024, 800 * MIB, 10 * MIB, 0)  # no new reading yet


async def test_a_probe_left_by_an_earlier_run_is_used_and_one_that_stopped_is_started_again(docker, runtime):
    left = docker.add(memory_probe.probe_name(STACK), {"Labels": {memory_probe.LABEL_PROBE: STACK}})
    left.starts = 1
    probe_writes(docker, left, 50.0, 700)

    assert (await runtime.host_memory(("vllm:1",))).available == 700 * MIB
    assert left.running and docker.actions("create") == []
    left.running = False  # stopped by hand: its output says nothing new
    with pytest.raises(DockerError, match=r"the memory probe had stopped \(exited, exit code 0\): started again"):
        await runtime.host_memory(("vllm:1",))
    assert left.running
    probe_writes(docker, left, 60.0, 600)
    assert (await runtime.host_memory(("vllm:1",))).available == 600 * MIB
    await runtime.remove_memory_probe()
    assert docker.actions("remove") == [("remove", left.name)]
    await runtime.remove_memory_probe()  # none left: nothing to say


async def test_no_reading_without_an_image_and_never_from_someone_elses_container(docker, runtime):
    with pytest.raises(
        DockerError, match=r"none of vllm:1, vllm:2 is on it; set memory_probe_image in its \[\[host\]\]"
    ):
        await runtime.host_memory(("vllm:1", "vllm:2"))
    docker.add(memory_probe.probe_name(STACK), {"Labels": {}}, running=True)
    with pytest.raises(DockerError, match="is on the host and is not the waker's memory probe; rename or remove it"):
        await runtime.host_memory(("vllm:1",))
    assert docker.actions("create", "start", "remove") == []


async def test_a_probe_that_runs_but_writes_nothing_new_is_no_reading(docker, runtime, monkeypatch):
    docker.images["vllm:1"] = "sha256:v1"
    docker.on_start = lambda container: probe_writes(docker, container, 100.0, 900)
    clock = [1000.0]
    monkeypatch.setattr(runtime_module.time, "monotonic", lambda: clock[0])
    assert (await runtime.host_memory(("vllm:1",))).available == 900 * MIB
    clock[0] += 2  # within the probe's stale limit: the same reading stands
    assert (await runtime.host_memory(("vllm:1",))).available == 900 * MIB
    clock[0] += 2  # 4 s without a new reading: the host stalled, say
    with pytest.raises(DockerError, match="the memory probe has written no new reading for 4 s"):
        await runtime.host_memory(("vllm:1",))
    probe_writes(docker, docker.container(memory_probe.probe_name(STACK)), 104.0, 800)
    assert (await runtime.host_memory(("vllm:1",))).available == 800 * MIB


async def test_only_the_probe_is_removed_never_a_stranger_of_its_name(docker, runtime):
    stranger = docker.add(memory_probe.probe_name(STACK), {"Labels": {}}, running=True)
    await runtime.remove_memory_probe()
    assert stranger.running and docker.actions("remove") == []
