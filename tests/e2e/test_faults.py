"""Faults: the service keeps working and loses nothing. A model killed mid-stream, Docker going away
and coming back, a container removed by hand, an image deleted, nginx reloaded under load."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import aiohttp
import openai
import pytest

from tests.e2e.stack import FAKE_IMAGE, docker, fake_model, start_socket_proxy
from tests.eventually import eventually, eventually_async

pytestmark = pytest.mark.e2e

SCHED = {"start_timeout": "60s", "stop_timeout": "2s", "min_uptime": "0s"}


async def health(session, stack) -> tuple[int, dict]:
    async with session.get(f"{stack.url}/healthz") as response:
        return response.status, await response.json()


async def test_a_model_killed_mid_stream_ends_the_stream_promptly_and_restarts_on_demand(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=0.2, extra=["--tokens-per-second", "5"])], scheduler=SCHED)
    body = json.dumps({"model": "alpha", "prompt": "x", "stream": True, "max_tokens": 100}).encode()
    async with aiohttp.ClientSession() as session:
        chunks, done = 0, False
        async with session.post(f"{stack.url}/v1/completions", data=body) as response:
            killed_at = None
            try:
                async for line in response.content:
                    chunks += line.startswith(b"data: {")
                    done = done or line.startswith(b"data: [DONE]")
                    if chunks == 3 and killed_at is None:
                        docker("kill", stack.containers()[0])
                        killed_at = time.monotonic()
            except aiohttp.ClientPayloadError:
                pass  # the cut stream shows as an incomplete body: what a client must see
        assert killed_at is not None and not done
        assert time.monotonic() - killed_at < 3  # ended promptly, not a hang
        async with session.post(f"{stack.url}/v1/completions", data=b'{"model": "alpha", "prompt": "x"}') as again:
            assert again.status == 200


@pytest.fixture
def docker_proxy(tmp_path):
    """The filtering socket proxy, standing in for the Docker daemon that the test takes away."""
    sock = tmp_path / "docker.sock"

    def start() -> subprocess.Popen:
        return start_socket_proxy(sock, tmp_path / "stack0" / "models.toml", stderr=subprocess.DEVNULL)

    state = {"process": start()}
    yield sock, state, start
    state["process"].terminate()
    state["process"].wait(timeout=10)


async def test_docker_going_away_degrades_health_then_the_waker_reconnects(make_stack, docker_proxy):
    sock, state, start = docker_proxy
    stack = make_stack(
        [fake_model("alpha", load_delay=0.2), fake_model("beta", load_delay=0.2)],
        scheduler=SCHED,
        docker_host=f"unix://{sock}",
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/alpha/completions", data=b"{}") as response:
            assert response.status == 200
        state["process"].terminate()  # Docker "restarts": the socket goes away
        state["process"].wait(timeout=10)
        sock.unlink(missing_ok=True)

        async def health_is(wanted: int) -> tuple[int, dict] | None:
            status, body = await health(session, stack)
            return (status, body) if status == wanted else None

        _, body = await eventually_async(lambda: health_is(503), 5, "health degraded", stack.log)
        assert body["status"] == "degraded" and body["docker"]
        async with session.post(f"{stack.url}/v1/alpha/completions", data=b"{}") as response:
            assert response.status == 200  # a running model keeps serving
        async with session.post(f"{stack.url}/v1/beta/completions", data=b"{}") as response:
            assert response.status == 503  # a start fails clearly instead of hanging
            assert "Docker" in (await response.json())["error"]["message"]
        state["process"] = start()
        _, body = await eventually_async(lambda: health_is(200), 10, "health back", stack.log)
        assert body["docker"] == "connected"
        async with session.post(f"{stack.url}/v1/beta/completions", data=b"{}") as response:
            assert response.status == 200  # nothing was left stuck in "starting"


async def test_a_container_removed_by_hand_is_recreated_and_others_are_unaffected(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=0.2), fake_model("beta", load_delay=0.2)], scheduler=SCHED)
    async with aiohttp.ClientSession() as session:
        for model in ("alpha", "beta"):
            async with session.post(f"{stack.url}/v1/{model}/completions", data=b"{}") as response:
                assert response.status == 200
        alpha = docker(
            "ps", "-q", "--filter", f"label=io.waker.stack={stack.name}", "--filter", "label=io.waker.model=alpha"
        ).strip()
        docker("rm", "-f", alpha)
        async with session.post(f"{stack.url}/v1/beta/completions", data=b"{}") as response:
            assert response.status == 200
        async with session.post(f"{stack.url}/v1/alpha/completions", data=b"{}") as response:
            assert response.status == 200
    assert len(stack.containers()) == 2 and alpha not in " ".join(stack.containers())


async def test_a_deleted_image_is_named_in_the_error_and_others_are_unaffected(make_stack):
    image = f"waker-test/deleted:{int(time.time() * 1000)}"
    docker("tag", FAKE_IMAGE, image)
    stack = make_stack(
        [{**fake_model("alpha", load_delay=0.2), "image": image}, fake_model("beta", load_delay=0.2)], scheduler=SCHED
    )
    docker("rmi", image)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/alpha/completions", data=b"{}") as response:
            assert response.status == 503 and image in (await response.json())["error"]["message"]
        async with session.post(f"{stack.url}/v1/beta/completions", data=b"{}") as response:
            assert response.status == 200


def test_nginx_reloads_under_load_drop_no_request(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=0.2)], scheduler=SCHED)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused")  # retries as shipped
    assert client.completions.create(model="alpha", prompt="warm", max_tokens=1)
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                client.completions.create(model="alpha", prompt="x", max_tokens=1)
                served[0] += 1
            except openai.OpenAIError as exc:
                failures.append(repr(exc))

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()
    for i in range(5):  # each reload adds a model: a real config change, so nginx really reloads
        stack.models.append(fake_model(f"extra{i}", host_port=stack.model_port_base + 10 + i))
        stack.write_config()
        assert stack.cli("reload").returncode == 0
        eventually(
            lambda before=served[0]: served[0] >= before + 12, 10, "requests served after the reload", lambda: failures
        )
    stop.set()
    for worker in workers:
        worker.join()
    assert failures == [] and served[0] > 50
    assert stack.log().count("nginx_reloaded") == 5


async def test_a_missing_egress_network_is_a_clear_error_and_leaves_no_half_made_container(make_stack):
    """Network addressing (as in compose), on a host-routable network so the host's nginx reaches
    the model: with the egress network gone, the start fails naming it, and no unconnected container
    is left behind for the next start to run."""
    network, subnet = f"waker-test-models-{int(time.time() * 1000) % 100000}", "172.30.194"
    docker("network", "create", "--subnet", f"{subnet}.0/24", "--ip-range", f"{subnet}.0/25", network)
    try:
        waker = {"network": network, "model_ip_base": f"{subnet}.128", "egress_network": f"{network}-absent"}
        stack = make_stack([fake_model("alpha", load_delay=0.2)], scheduler=SCHED, waker=waker)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{stack.url}/v1/alpha/completions", data=b"{}") as response:
                message = (await response.json())["error"]["message"]
                assert response.status == 503 and f"{network}-absent" in message
        assert docker("ps", "-aq", "--filter", f"label=io.waker.stack={stack.name}").split() == []
        stack.stop()
        working = make_stack(
            [fake_model("alpha", load_delay=0.2)],
            scheduler=SCHED,
            waker={"network": network, "model_ip_base": f"{subnet}.128"},
        )
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{working.url}/v1/alpha/completions", data=b"{}") as response:
                assert response.status == 200
        info = json.loads(docker("inspect", f"{working.name}-alpha"))[0]
        assert info["NetworkSettings"]["Networks"][network]["IPAddress"] == f"{subnet}.128"
        working.stop()
    finally:
        docker("network", "rm", network, check=False)
