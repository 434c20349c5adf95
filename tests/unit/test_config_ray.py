"""A model over two hosts (`hosts = 2`, issue 17): its Ray keys, their placeholders, the checks that
refuse what cannot run, and the head and worker containers the waker creates for it."""

from pathlib import Path

import pytest

from waker.config.hosts import Interconnect
from waker.config.ray import DEFAULT_WORKER_COMMAND, RayNode, RayNodes
from waker.config.schema import parse_config
from waker.docker.ray_pair import node_ip
from waker.docker.spec import (
    LABEL_MODEL,
    LABEL_RAY_NODE,
    LABEL_SPEC,
    container_name,
    container_spec,
    ray_node_spec,
    worker_name,
)
from waker.errors import ConfigError

PATH = Path("/etc/waker/models.toml")
HOSTS = [
    {"name": "spark1", "nccl_socket_ifname": "enp1s0f1np1", "vllm_host_ip": "192.168.100.10"},
    {"name": "spark2", "docker_host": "ssh://spark2", "address": "spark2.lan", "nccl_socket_ifname": "enP2p1s0f1np1"},
]
HEAD = ["/bin/bash", "-c"]


def config(*models, waker=None, defaults=None):
    raw = {"host": HOSTS, "waker": waker or {}, "defaults": defaults or {}, "model": list(models)}
    return parse_config(raw, PATH)


def huge(**keys):
    model = {
        "id": "huge",
        "image": "vllm:1",
        "hosts": 2,
        "entrypoint": HEAD,
        "command": ["ray start --head --node-ip-address={head_ip} --port={ray_port} && exec vllm serve m"],
        **keys,
    }
    return {key: value for key, value in model.items() if value is not None}


def problems(*models, **kwargs) -> str:
    with pytest.raises(ConfigError) as failed:
        config(*models, **kwargs)
    return "\n".join(failed.value.problems)


def test_defaults_are_the_playbooks_and_the_model_is_reached_at_its_own_port():
    model = config(huge(port=8000)).models[0]
    assert model.ray.port == 6379 and model.ray.worker_command == DEFAULT_WORKER_COMMAND
    assert model.host_port == 8000 and model.address.port == 8000  # host networking: nothing is published
    assert config({"id": "small", "image": "x"}).models[0].host_port == 18100  # one host: as before


def test_placeholders_are_filled_for_the_placement_and_json_braces_are_left_alone():
    nodes = RayNodes("192.168.100.10", "192.168.100.11", 6380)
    assert nodes.fill(DEFAULT_WORKER_COMMAND) == (
        "ray",
        "start",
        "--block",
        "--address=192.168.100.10:6380",
        "--node-ip-address=192.168.100.11",
    )
    assert nodes.fill(('--compilation-config={"level": 3}',)) == ('--compilation-config={"level": 3}',)
    spark1, spark2 = config(huge()).hosts
    assert (node_ip(spark1), node_ip(spark2)) == ("192.168.100.10", "spark2.lan")  # link address, else address


@pytest.mark.parametrize(
    ("model", "kwargs", "expected"),
    [
        (huge(sleep=1, gpu_memory=0.5), {}, "sleep mode is not available for hosts = 2"),
        (
            huge(),
            {"waker": {"network": "models", "model_ip_base": "172.30.92.128"}},
            "hosts = 2 runs its Ray containers with host networking, which the network deployment",
        ),
        (huge(port=8000, host_port=18100), {}, "host_port (18100) must be its port (8000); leave host_port out"),
        (
            huge(worker_command=["ray", "start", "--address={head}:{ray_port}"]),
            {},
            "field 'worker_command': unknown placeholder(s) {head}; "
            "the placeholders are {head_ip}, {worker_ip}, {ray_port}",
        ),
        (huge(worker_command=[]), {}, "field 'worker_command' is empty"),
        (huge(ray_port=0), {}, "field 'ray_port': expected a port number"),
        (
            {"id": "small", "image": "x", "ray_port": 6400},
            {},
            "model 'small': field 'ray_port' is only for a model with hosts = 2",
        ),
    ],
)
def test_what_cannot_run_over_two_hosts_is_refused_clearly(model, kwargs, expected):
    assert expected in problems(model, **kwargs)


def test_the_ray_port_must_be_free_of_other_models_ports():
    found = problems({"id": "small", "image": "x", "host_port": 6379}, huge())
    assert "model 'huge': field 'ray_port': port 6379 is already used by model 'small'; set another ray_port" in found
    found = problems(huge(), huge(id="huge2", port=8001))
    assert "model 'huge2': field 'ray_port': port 6379 is already used by the Ray head of model 'huge'" in found


def test_defaults_may_carry_the_ray_keys_for_the_models_over_two_hosts():
    cfg = config({"id": "small", "image": "x"}, huge(), defaults={"worker_command": ["my-worker", "{head_ip}"]})
    assert cfg.model("huge").ray.worker_command == ("my-worker", "{head_ip}")


def specs(model_keys=None, env=None):
    cfg = config(huge(env=env or {}, gpus="all", shm_size="10g", **(model_keys or {})))
    model, (spark1, spark2) = cfg.models[0], cfg.hosts
    nodes = RayNodes(node_ip(spark1), node_ip(spark2), model.ray.port)
    return (
        model,
        ray_node_spec(model, "spark", RayNode.HEAD, nodes, spark1.interconnect),
        ray_node_spec(model, "spark", RayNode.WORKER, nodes, spark2.interconnect),
    )


def test_head_and_worker_run_on_the_host_network_with_their_hosts_interconnect():
    model, head, worker = specs(env={"NCCL_DEBUG": "INFO", "MASTER_ADDR": "override"})
    for spec in (head, worker):
        host = spec["HostConfig"]
        assert host["NetworkMode"] == "host" and "PortBindings" not in host and "ExposedPorts" not in spec
        assert host["ShmSize"] == 10 * 1024**3 and host["DeviceRequests"][0]["Count"] == -1
        assert spec["Labels"][LABEL_MODEL] == "huge" and "NCCL_DEBUG=INFO" in spec["Env"]
        assert "MASTER_ADDR=override" in spec["Env"] and "RAY_memory_monitor_refresh_ms=0" in spec["Env"]
    assert "NCCL_SOCKET_IFNAME=enp1s0f1np1" in head["Env"] and "VLLM_HOST_IP=192.168.100.10" in head["Env"]
    assert "NCCL_SOCKET_IFNAME=enP2p1s0f1np1" in worker["Env"] and "VLLM_HOST_IP=spark2.lan" in worker["Env"]
    assert head["Labels"][LABEL_RAY_NODE] == "head" and worker["Labels"][LABEL_RAY_NODE] == "worker"
    # The head runs the model's command; the worker its worker_command, in place of the image's entrypoint.
    assert head["Entrypoint"] == HEAD
    assert head["Cmd"] == ["ray start --head --node-ip-address=192.168.100.10 --port=6379 && exec vllm serve m"]
    assert (
        worker["Entrypoint"]
        == ["ray", "start", "--block", "--address=192.168.100.10:6379", "--node-ip-address=spark2.lan"]
        and "Cmd" not in worker
    )


def test_the_heads_served_names_get_the_aliases_as_a_one_host_models_do():
    _, head, _ = specs(
        {"entrypoint": None, "aliases": ["big"], "command": ["serve", "m", "--served-model-name", "huge-v1"]}
    )
    assert head["Cmd"] == ["serve", "m", "--served-model-name", "huge-v1", "huge", "big"]
    assert "VLLM_SKIP_MODEL_NAME_VALIDATION=1" in head["Env"]


def test_a_new_placement_is_a_new_spec_and_the_worker_has_a_name_no_model_can_have():
    model, head, worker = specs()
    moved = ray_node_spec(model, "spark", RayNode.HEAD, RayNodes("10.0.0.1", "10.0.0.2", 6379), Interconnect())
    assert moved["Labels"][LABEL_SPEC] != head["Labels"][LABEL_SPEC]
    assert worker_name("spark", "huge") not in (
        container_name("spark", "huge"),
        container_name("spark", "huge_ray-worker"),
    )
    assert head["Labels"][LABEL_SPEC] != container_spec(model, "spark")["Labels"][LABEL_SPEC]
