"""The Docker container a model runs in, as a pure function of its config.

The spec hash is stored as a label, so a container whose config changed is recognised and recreated.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from typing import Any

from waker.config.fields import SERVED_NAME_FLAG, Address, served_names_index
from waker.config.hosts import Interconnect
from waker.config.ray import RayNode, RayNodes
from waker.config.schema import ModelConfig

LABEL_MANAGED = "io.waker.managed"
LABEL_STACK = "io.waker.stack"
LABEL_MODEL = "io.waker.model"
LABEL_SPEC = "io.waker.spec-hash"
LABEL_EGRESS = "io.waker.egress-network"
# Head or worker of a model over two hosts (driver.RayNode); absent on a one-host model's container.
# Not io.waker.role: that one is the operator's, and the socket proxy refuses it on a create.
LABEL_RAY_NODE = "io.waker.ray-node"
# The compose gateway (nginx) carries io.waker.role=gateway and never the managed label: the waker does
# not stop, start or remove it; it may only ask it to reload (SIGHUP), through the socket proxy.
LABEL_ROLE = "io.waker.role"
ROLE_GATEWAY = "gateway"

# vLLM answers 404 to a request whose `model` is none of its served names. Clients name a model by
# an alias (body routing) or by anything at all (path routing: the URL chose the model), so for a
# vLLM command the aliases join the served names (every vLLM version) and name validation is off
# (vLLM >= 0.32 reads the variable; older ones ignore it).
SKIP_NAME_VALIDATION = "VLLM_SKIP_MODEL_NAME_VALIDATION"
# Sleep mode: vLLM serves /sleep, /wake_up and /is_sleeping only in dev mode, and frees GPU memory
# only with --enable-sleep-mode (its CuMem allocator). It refuses that flag on any platform without
# sleep support, CPU included ("Sleep mode is not supported on current platform"), so the flag goes
# only to models given GPUs; without them dev mode alone pauses and resumes the engine, freeing nothing.
DEV_MODE = "VLLM_SERVER_DEV_MODE"
SLEEP_MODE_FLAG = "--enable-sleep-mode"


def worker_name(stack: str, model_id: str) -> str:
    """The Ray worker's container name: never a model's (":" is not Docker-legal, so it adds a hash)."""
    return container_name(stack, f"{model_id}:ray-worker")


def container_name(stack: str, model_id: str) -> str:
    """A Docker-legal, collision-free name: characters Docker refuses are replaced and a hash added."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)
    if safe != model_id:
        safe += "-" + hashlib.sha256(model_id.encode()).hexdigest()[:6]
    return f"{stack}-{safe}"


def placed(model: ModelConfig, network: str, address: str) -> ModelConfig:
    """The model as it runs on the host at `address`: in the host deployment its port is published on
    that address, which is where nginx and the health checks reach it; on a network, at its own."""
    if network or model.address.host == address:
        return model
    return replace(model, address=Address(address, model.host_port))


def container_spec(model: ModelConfig, stack: str, network: str = "", egress_network: str = "") -> dict[str, Any]:
    """The body of Docker's container-create call, labels and spec hash included.

    Without `network` the model publishes its port on its address's host (host deployment: loopback, or
    the address of the `[[host]]` it runs on, `Launcher._here`); with it, the model
    publishes nothing and joins that network at its fixed address, where only the gateway reaches it.
    The egress network (joined after create: one network per create call) only lets it download."""
    port_key = f"{model.port}/tcp"
    host_config = _host_config(model)
    if not network:
        host_config["PortBindings"] = {port_key: [{"HostIp": model.address.host, "HostPort": str(model.host_port)}]}
    else:
        host_config["NetworkMode"] = network
    command, env = model.command, dict(model.env)
    if served_names_index(command) is not None:
        command = served_names_command(command, model.names)
        env.setdefault(SKIP_NAME_VALIDATION, "1")
    if model.sleep.enabled:
        env[DEV_MODE] = "1"
        if model.gpus and SLEEP_MODE_FLAG not in command:
            command = (*command, SLEEP_MODE_FLAG)
    spec = _spec(model, stack, host_config, env, command, model.entrypoint)
    spec["ExposedPorts"] = {port_key: {}}
    if network:
        spec["NetworkingConfig"] = {"EndpointsConfig": {network: {"IPAMConfig": {"IPv4Address": model.address.host}}}}
    if egress_network:
        spec["Labels"][LABEL_EGRESS] = egress_network
    spec["Labels"][LABEL_SPEC] = spec_hash(spec)
    return spec


def ray_node_spec(
    model: ModelConfig, stack: str, node: RayNode, nodes: RayNodes, interconnect: Interconnect
) -> dict[str, Any]:
    """A container of a model over two hosts, as NVIDIA's playbook runs it: host networking (the
    head's server listens on its host's `port`; nothing is published), the host's interconnect in
    the environment, the placeholders filled in for this placement. The head runs the model's
    `command`; the worker runs `worker_command` in place of the image's entrypoint, as the playbook's
    `run_cluster.sh` does (`--entrypoint /bin/bash -c "ray start ..."`)."""
    host_config = _host_config(model)
    host_config["NetworkMode"] = "host"
    own_ip = nodes.head_ip if node is RayNode.HEAD else nodes.worker_ip
    env = {
        "RAY_memory_monitor_refresh_ms": "0",
        "VLLM_HOST_IP": own_ip,
        "MASTER_ADDR": nodes.head_ip,
        **dict(interconnect.env()),
        **dict(model.env),
    }
    if node is RayNode.HEAD:
        command = nodes.fill(model.command)
        if served_names_index(command) is not None:
            command = served_names_command(command, model.names)
            env.setdefault(SKIP_NAME_VALIDATION, "1")
        spec = _spec(model, stack, host_config, env, command, model.entrypoint)
    else:
        spec = _spec(model, stack, host_config, env, (), nodes.fill(model.ray.worker_command))
    spec["Labels"][LABEL_RAY_NODE] = node.value
    spec["Labels"][LABEL_SPEC] = spec_hash(spec)
    return spec


def _host_config(model: ModelConfig) -> dict[str, Any]:
    host_config: dict[str, Any] = {
        "Binds": list(model.volumes),
        "RestartPolicy": {"Name": "no"},
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
    }
    if model.shm_size:
        host_config["ShmSize"] = model.shm_size
    if model.ulimits:
        host_config["Ulimits"] = [{"Name": n, "Soft": v, "Hard": v} for n, v in model.ulimits]
    if model.gpus:
        request: dict[str, Any] = {"Driver": "nvidia", "Capabilities": [["gpu"]]}
        if model.gpus == "all":
            request["Count"] = -1
        else:
            request["DeviceIDs"] = model.gpus.split(",")
        host_config["DeviceRequests"] = [request]
    return host_config


def _spec(
    model: ModelConfig,
    stack: str,
    host_config: dict[str, Any],
    env: dict[str, str],
    command: tuple[str, ...],
    entrypoint: tuple[str, ...] | None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "Image": model.image,
        "Env": [f"{k}={v}" for k, v in sorted(env.items())],
        "HostConfig": host_config,
        "Labels": {LABEL_MANAGED: "true", LABEL_STACK: stack, LABEL_MODEL: model.id},
    }
    if command:
        spec["Cmd"] = list(command)
    if entrypoint is not None:
        spec["Entrypoint"] = list(entrypoint)
    return spec


def served_names_command(command: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """`command` with every name in `names` among the values of its --served-model-name (vLLM takes
    several), the names already there first and in their order: the first is the one vLLM reports."""
    index = served_names_index(command)
    if index is None:
        return command
    flag = command[index]
    if flag.startswith(SERVED_NAME_FLAG + "="):
        given, end = [flag.split("=", 1)[1]], index + 1
    else:
        end = index + 1
        while end < len(command) and not command[end].startswith("-"):
            end += 1
        given = list(command[index + 1 : end])
    served = given + [name for name in names if name not in given]
    return (*command[:index], SERVED_NAME_FLAG, *served, *command[end:])


def spec_hash(spec: dict[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
