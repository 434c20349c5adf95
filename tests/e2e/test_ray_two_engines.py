"""A model over two hosts on real Ray (issue 17): the Ray head on the main engine, the Ray worker on
engine 2, both with host networking on this machine's loopback, as NVIDIA's two-Spark playbook runs
them across the link. The head's model server (waker-ray:test, tests/ray_node/) refuses connections
until the cluster has both nodes, as vLLM does until its engine is built, and ends when a node leaves,
as vLLM's engine dies with a Ray worker: the two facts the multi-host start and tear-down rely on.
"""

from __future__ import annotations

import subprocess
import uuid

import openai
import pytest

from tests.e2e.stack import docker, free_port, free_port_range
from tests.eventually import eventually

pytestmark = pytest.mark.e2e

RAY_IMAGE = "waker-ray:test"
NODE_LOST_EXIT = 3  # tests/ray_node/node.py


@pytest.fixture
def ray_containers(second_engine):
    """Names of containers to remove at the end: (on the main engine, on engine 2)."""
    second_engine.load_images(RAY_IMAGE)
    main, other = [], []
    yield main, other
    for name in main:
        docker("rm", "-f", name, check=False)
    for name in other:
        second_engine.docker("rm", "-f", name, check=False)


def _state(inspect, name: str) -> tuple[str, int]:
    status, code = inspect("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).split()
    return status, int(code)


def test_the_head_serves_once_the_worker_on_the_other_engine_joined_and_ends_when_it_leaves(
    second_engine, ray_containers
):
    tag = uuid.uuid4().hex[:8]
    head, worker, model = f"ray-head-{tag}", f"ray-worker-{tag}", f"big-{tag}"
    gcs_port, serve_port = free_port(), free_port()
    head_ports, worker_ports = free_port_range(64), free_port_range(64)
    ray_containers[0].append(head)
    ray_containers[1].append(worker)

    docker(
        "run",
        "-d",
        "--name",
        head,
        "--network",
        "host",
        RAY_IMAGE,
        "head",
        "--port",
        str(gcs_port),
        "--port-base",
        str(head_ports),
        "--nodes",
        "2",
        "--",
        "serve",
        f"fake/{model}",
        "--host",
        "127.0.0.1",
        "--port",
        str(serve_port),
        "--served-model-name",
        model,
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{serve_port}/v1", api_key="unused", max_retries=0, timeout=5)
    eventually(
        lambda: "cluster has 1/2 nodes, waiting" in _logs(head),
        60,
        "the head waiting for a second node",
        lambda: _logs(head),
    )
    with pytest.raises(openai.APIConnectionError):
        client.models.list()  # alone, the head does not listen

    second_engine.docker(
        "run",
        "-d",
        "--name",
        worker,
        "--network",
        "host",
        RAY_IMAGE,
        "worker",
        "--address",
        f"127.0.0.1:{gcs_port}",
        "--port-base",
        str(worker_ports),
    )
    eventually(lambda: _lists(client, model), 90, f"{model} served once the worker joined", lambda: _logs(head))
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=5)
    assert reply.model == model and reply.usage is not None and reply.usage.completion_tokens == 5

    # The worker's host goes away: the head notices the lost node and ends its model server.
    second_engine.docker("stop", worker)
    assert eventually(
        lambda: _state(docker, head)[0] == "exited" and _state(docker, head),
        60,
        "the head exiting after the worker left",
        lambda: _logs(head),
    ) == ("exited", NODE_LOST_EXIT)
    assert "a node left the cluster (1/2 alive)" in _logs(head)


def _logs(name: str) -> str:
    return subprocess.run(
        ["docker", "logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    ).stdout


def _lists(client: openai.OpenAI, model: str) -> bool:
    try:
        return [m.id for m in client.models.list()] == [model]
    except openai.APIConnectionError:
        return False
