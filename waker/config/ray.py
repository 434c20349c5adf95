"""What a model spread over two hosts on Ray (`hosts = 2`) declares beyond a one-host model's keys, read
and checked.

Such a model runs two containers with host networking, as NVIDIA's two-Spark playbook does: its own
`command` on its head host (the Ray head, then the model server, which nginx reaches there) and
`worker_command` on the other host (a Ray worker joining the head). Both may name the nodes' addresses
and the Ray port as placeholders, which the waker fills in for the two hosts the model is placed on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from waker.config import fields

MODEL_KEYS = ("ray_port", "worker_command")
DEFAULT_RAY_PORT = 6379  # Ray's own default GCS port, which the playbook keeps
# The playbook's worker: a Ray node that joins the head's cluster and stays until its container stops.
DEFAULT_WORKER_COMMAND = ("ray", "start", "--block", "--address={head_ip}:{ray_port}", "--node-ip-address={worker_ip}")
PLACEHOLDERS = ("head_ip", "worker_ip", "ray_port")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RayNode(StrEnum):
    """A container's part in a model over two hosts."""

    HEAD = "head"  # the Ray head, which serves the model: the model's container, as a one-host model's
    WORKER = "worker"  # the Ray worker on the other host: serves nothing itself, but the model dies with it


@dataclass(frozen=True, slots=True)
class RayConfig:
    port: int = DEFAULT_RAY_PORT
    worker_command: tuple[str, ...] = DEFAULT_WORKER_COMMAND  # the worker container's whole command line


@dataclass(frozen=True, slots=True)
class RayNodes:
    """The values of the placeholders for one placement: each node's IP (its host's `vllm_host_ip`,
    else its `address`) and the head's Ray port."""

    head_ip: str
    worker_ip: str
    ray_port: int

    def fill(self, args: tuple[str, ...]) -> tuple[str, ...]:
        values = {"head_ip": self.head_ip, "worker_ip": self.worker_ip, "ray_port": str(self.ray_port)}
        return tuple(_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg) for arg in args)


class RayModel(Protocol):
    """What the checks read of a ModelConfig (config.py imports this module, not the reverse)."""

    @property
    def id(self) -> str: ...
    @property
    def hosts(self) -> int: ...
    @property
    def command(self) -> tuple[str, ...]: ...
    @property
    def port(self) -> int: ...
    @property
    def host_port(self) -> int: ...
    @property
    def ray(self) -> RayConfig: ...


def parse_ray(table: fields.Table) -> RayConfig:
    worker = tuple(table.get("worker_command", fields.list_of(fields.string), list(DEFAULT_WORKER_COMMAND)))
    if not worker:
        table.problems.append(
            f"{table.where}: field 'worker_command' is empty: give the Ray worker's command "
            f"line, such as {list(DEFAULT_WORKER_COMMAND)}"
        )
        worker = DEFAULT_WORKER_COMMAND
    return RayConfig(table.get("ray_port", fields.port, DEFAULT_RAY_PORT), worker)


def ray_problems(where: str, model: RayModel, entry: dict[str, Any], sleeps: bool, network: str) -> list[str]:
    """What keeps a model over two hosts from running as declared. A one-host model's own entry may
    not carry the Ray keys ([defaults] may, for the models over two hosts)."""
    if model.hosts != 2:
        return [
            f"{where}: field '{key}' is only for a model with hosts = 2 (its Ray worker on the second host); "
            "remove it or set hosts = 2"
            for key in MODEL_KEYS
            if key in entry
        ]
    problems = []
    if network:
        problems.append(
            f"{where}: hosts = 2 runs its Ray containers with host networking, which the network "
            f"deployment ([waker] network = {network!r}, compose) can neither reach nor create "
            "through its socket proxy: run the gateway on the host (docs/deployment.md, systemd)"
        )
    if sleeps:
        problems.append(
            f"{where}: sleep mode is not available for hosts = 2 (a model over two hosts on Ray "
            "stops when idle): set sleep = 0"
        )
    if model.host_port != model.port:
        problems.append(
            f"{where}: field 'host_port': with hosts = 2 the model listens on its head host's "
            f"network directly (no port is published), so host_port ({model.host_port}) must be its "
            f"port ({model.port}); leave host_port out"
        )
    for key, args in (("command", model.command), ("worker_command", model.ray.worker_command)):
        unknown = sorted({m.group(1) for arg in args for m in _PLACEHOLDER.finditer(arg)} - set(PLACEHOLDERS))
        if unknown:
            problems.append(
                f"{where}: field '{key}': unknown placeholder(s) "
                f"{', '.join('{' + name + '}' for name in unknown)}; the placeholders are "
                f"{', '.join('{' + name + '}' for name in PLACEHOLDERS)}"
            )
    return problems


def claim_ray_port(where: str, model: RayModel, taken: dict[int, str]) -> list[str]:
    """A model over two hosts adds its Ray head's port to the ports in use (`taken`: port -> its user),
    unless it is taken already."""
    if model.hosts != 2:
        return []
    if model.ray.port in taken:
        return [
            f"{where}: field 'ray_port': port {model.ray.port} is already used by {taken[model.ray.port]}; "
            "set another ray_port"
        ]
    taken[model.ray.port] = f"the Ray head of model '{model.id}'"
    return []
