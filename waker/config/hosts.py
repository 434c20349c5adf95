"""`[[host]]` entries: the Docker engines models run on (issue 17, two DGX Sparks), read and checked.

No `[[host]]` means one host, the local engine of `[waker] docker_host` with `[scheduler] gpu_capacity`,
exactly as before hosts existed (`implicit_host`). With entries, each names its own engine, budget,
the address nginx reaches its models at, and the interconnect a model spread over two hosts uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from waker.config import fields

IMPLICIT_HOST = "local"
HOST_KEYS = {
    "name",
    "docker_host",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "gpu_capacity",
    "address",
    "nccl_socket_ifname",
    "ucx_net_devices",
    "gloo_socket_ifname",
    "tp_socket_ifname",
    "nccl_ib_hca",
    "vllm_host_ip",
    "memory_floor",
    "memory_probe_image",
}
_TLS_KEYS = ("tls_ca", "tls_cert", "tls_key")


class DockerScheme(StrEnum):
    UNIX = "unix"  # the engine's socket on this machine
    SSH = "ssh"  # `ssh user@host docker system dial-stdio`, as the docker CLI does
    TCP = "tcp"  # the engine's TCP port, always with TLS client certificates
    AS_GIVEN = "as-given"  # [waker] docker_host without [[host]]: handed to aiodocker as it is, as before


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class DockerEndpoint:
    scheme: DockerScheme
    url: str  # "" = the local default (DOCKER_HOST, else /var/run/docker.sock), else a full URL
    tls: TlsFiles | None = None

    def __str__(self) -> str:
        return self.url or "the local Docker engine"


@dataclass(frozen=True, slots=True)
class Interconnect:
    """What a model spread over hosts (Ray head here, worker there) needs to find the fast link:
    NVIDIA's playbook passes these to each node's container as environment variables."""

    nccl_socket_ifname: str = ""
    ucx_net_devices: str = ""
    gloo_socket_ifname: str = ""
    tp_socket_ifname: str = ""
    nccl_ib_hca: str = ""
    vllm_host_ip: str = ""  # this host's address on the link; Ray's node IP as well

    def env(self) -> tuple[tuple[str, str], ...]:
        """The environment of this host's Ray node container; unset values are left out."""
        names = (
            ("NCCL_SOCKET_IFNAME", self.nccl_socket_ifname),
            ("UCX_NET_DEVICES", self.ucx_net_devices),
            ("GLOO_SOCKET_IFNAME", self.gloo_socket_ifname),
            ("TP_SOCKET_IFNAME", self.tp_socket_ifname),
            ("NCCL_IB_HCA", self.nccl_ib_hca),
            ("VLLM_HOST_IP", self.vllm_host_ip),
        )
        return tuple((name, value) for name, value in names if value)


@dataclass(frozen=True, slots=True)
class HostConfig:
    name: str
    docker: DockerEndpoint
    gpu_capacity: float
    address: str  # where nginx reaches this host's models (their published ports)
    interconnect: Interconnect
    memory_floor: int | None = None  # bytes the memory guard keeps available here; None: [scheduler]'s
    memory_probe_image: str = ""  # the image its memory is read with through Docker; "": a model's


def probe_images(host: HostConfig, images: tuple[str, ...]) -> tuple[str, ...]:
    """The images to read the host's memory with (`docker.memory_probe`), the first one it has: its
    `memory_probe_image`, else the models' (`images`, in config order)."""
    return (host.memory_probe_image,) if host.memory_probe_image else tuple(dict.fromkeys(images))


def implicit_host(docker_host: str, gpu_capacity: float) -> HostConfig:
    """The one host of a config without `[[host]]`: today's behaviour."""
    return HostConfig(
        IMPLICIT_HOST, DockerEndpoint(DockerScheme.AS_GIVEN, docker_host), gpu_capacity, "127.0.0.1", Interconnect()
    )


def local_host(hosts: tuple[HostConfig, ...]) -> HostConfig:
    """The host whose engine is this machine's (the first such entry; else the first entry)."""
    return next((h for h in hosts if h.docker.scheme in (DockerScheme.UNIX, DockerScheme.AS_GIVEN)), hosts[0])


def memory_host(hosts: tuple[HostConfig, ...]) -> str | None:
    """The host whose engine runs on this machine, whose memory is this machine's /proc/meminfo; None
    where every engine is remote."""
    for host in hosts:
        scheme, url = host.docker.scheme, host.docker.url
        if scheme is DockerScheme.UNIX or (scheme is DockerScheme.AS_GIVEN and (not url or url.startswith("unix://"))):
            return host.name
    return None


def host_name(value: Any) -> str:
    text = fields.string(value)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", text):
        raise ValueError(
            f"{text!r} is not a valid host name: 1 to 63 of a-z 0-9 _ . -, starting with a letter or digit"
        )
    return text


def host_count(value: Any) -> int:
    if value not in (1, 2) or isinstance(value, bool):
        raise ValueError(f"expected 1, or 2 for a model spread over two hosts on Ray, got {value!r}")
    return int(value)


def docker_endpoint(value: Any) -> DockerEndpoint:
    """A socket path, unix:///path, ssh://[user@]host[:port] or tcp://host:port."""
    text = fields.string(value).strip()
    if text.startswith("/"):
        text = f"unix://{text}"
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in (DockerScheme.UNIX, DockerScheme.SSH, DockerScheme.TCP):
        raise ValueError(f"expected a socket path, unix:///path, ssh://user@host or tcp://host:port, got {text!r}")
    if scheme == DockerScheme.UNIX and not rest.startswith("/"):
        raise ValueError(f"expected unix:// and an absolute socket path, got {text!r}")
    if scheme == DockerScheme.SSH and not re.fullmatch(r"([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(:\d{1,5})?", rest):
        raise ValueError(f"expected ssh://[user@]host[:port] (the host's SSH setup is used), got {text!r}")
    if scheme == DockerScheme.TCP and not re.fullmatch(r"[A-Za-z0-9.-]+:\d{1,5}", rest):
        raise ValueError(f"expected tcp://host:port, such as tcp://spark2:2376, got {text!r}")
    return DockerEndpoint(DockerScheme(scheme), text)


def host_address(value: Any) -> str:
    text = fields.string(value)
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}|\[?[0-9A-Fa-f:.]+\]?", text):
        raise ValueError(f'expected an IP address or DNS name, such as "192.168.100.2", got {text!r}')
    return text.strip("[]")


def link_names(value: Any) -> str:
    """An interface or device list as NCCL/UCX/Gloo read it: "enp1s0f1np1", "^lo,docker0",
    "mlx5_0:1,mlx5_1:1", "=rocep1s0f1"."""
    text = fields.string(value)
    if not re.fullmatch(r"[=^]?[A-Za-z0-9_.:@-]+(,[A-Za-z0-9_.:@-]+)*", text):
        raise ValueError(f'expected interface or device names separated by commas, such as "enp1s0f1np1", got {text!r}')
    return text


def parse_hosts(
    raw: Any, path: Path, docker_host_set: bool, network: str, default_capacity: float, problems: list[str]
) -> tuple[HostConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        problems.append(f"{path}: 'host' must be an array of tables, written [[host]]")
        return ()
    if raw and network:
        problems.append(
            f"{path}: [[host]] entries need the host deployment (models publish their ports on each "
            "host's address); [waker] network is the one-box compose deployment: remove one of them"
        )
    if raw and docker_host_set:
        problems.append(
            f"{path}: [waker] docker_host and [[host]] are both set: with [[host]] entries, each "
            "names its own docker_host; remove [waker] docker_host"
        )
    hosts = tuple(_parse_host(i, entry, path, default_capacity, problems) for i, entry in enumerate(raw))
    first: dict[tuple[str, str], int] = {}
    for index, host in enumerate(hosts):
        # Two entries for one engine would count its GPU twice.
        for what, value in (("name", host.name), ("docker_host", str(host.docker))):
            owner = first.setdefault((what, value), index)
            if owner != index:
                problems.append(
                    f"{path}: host '{host.name}': {what} {value!r} is already used by host "
                    f"'{hosts[owner].name}' (entry #{owner + 1}); each [[host]] needs its own"
                )
    return hosts


def _parse_host(
    index: int, entry: dict[str, Any], path: Path, default_capacity: float, problems: list[str]
) -> HostConfig:
    label = entry.get("name") if isinstance(entry.get("name"), str) else f"#{index + 1}"
    table = fields.Table(entry, None, f"{path}: host '{label}'", problems)
    name = str(table.get("name", host_name, required=True) or label)
    docker = table.get("docker_host", docker_endpoint, DockerEndpoint(DockerScheme.UNIX, ""))
    tls = [table.get(key, fields.string, "") for key in _TLS_KEYS]
    if docker.scheme == DockerScheme.TCP:
        if not all(tls):
            problems.append(
                f"{table.where}: a tcp:// docker_host needs tls_ca, tls_cert and tls_key (the client "
                "certificates of the engine's --tlsverify set-up); or reach the host with ssh://"
            )
        else:
            docker = DockerEndpoint(docker.scheme, docker.url, TlsFiles(*(path.parent / f for f in tls)))
    elif any(tls):
        problems.append(f"{table.where}: tls_ca, tls_cert and tls_key are only for a tcp:// docker_host")
    local = docker.scheme == DockerScheme.UNIX
    address = table.get("address", host_address, "127.0.0.1" if local else None) or ""
    if not address:
        problems.append(
            f"{table.where}: field 'address' is required for a remote docker_host: the address "
            'the gateway reaches this host\'s models at, such as "192.168.100.2"'
        )
    interconnect = Interconnect(
        **{
            key: table.get(key, link_names) or ""
            for key in (
                "nccl_socket_ifname",
                "ucx_net_devices",
                "gloo_socket_ifname",
                "tp_socket_ifname",
                "nccl_ib_hca",
            )
        },
        vllm_host_ip=table.get("vllm_host_ip", fields.ipv4) or "",
    )
    result = HostConfig(
        name,
        docker,
        table.get("gpu_capacity", fields.capacity, default_capacity),
        address,
        interconnect,
        table.get("memory_floor", fields.memory_floor),
        table.get("memory_probe_image", fields.string, ""),
    )
    table.reject_unknown(HOST_KEYS)
    return result


class Placed(Protocol):
    """What the placement check reads of a ModelConfig (config.py imports this module, not the reverse)."""

    @property
    def id(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def hosts(self) -> int: ...
    @property
    def gpu_memory(self) -> float: ...


def check_placement(
    models: tuple[Placed, ...],
    declared: tuple[HostConfig, ...],
    scheduler_capacity: float,
    path: Path,
    problems: list[str],
) -> None:
    """Every model can be placed: the host it names exists, a two-host model has two hosts, and its
    gpu_memory fits where it may run (a two-host model is charged on both)."""
    hosts = declared or (implicit_host("", scheduler_capacity),)
    by_name = {host.name: host for host in hosts}
    for model in models:
        where = f"{path}: model '{model.id}'"
        if model.host and model.host not in by_name:
            problems.append(
                f"{where}: field 'host': no [[host]] is named {model.host!r}; the hosts are "
                f"{', '.join(sorted(by_name))}"
            )
            continue
        if model.hosts > len(hosts):
            declared_now = (
                f"{len(declared)} {'is' if len(declared) == 1 else 'are'} declared"
                if declared
                else "no [[host]] is declared (the one host is the local engine)"
            )
            problems.append(
                f"{where}: field 'hosts': {model.hosts} hosts need as many [[host]] entries, and {declared_now}"
            )
            continue
        if not declared:
            if model.gpu_memory > scheduler_capacity:
                problems.append(
                    f"{where}: field 'gpu_memory': {model.gpu_memory:g} is more than [scheduler] "
                    f"gpu_capacity ({scheduler_capacity:g}), so it could never start"
                )
            continue
        if model.host and model.gpu_memory > by_name[model.host].gpu_capacity:
            problems.append(
                f"{where}: field 'gpu_memory': {model.gpu_memory:g} is more than host "
                f"'{model.host}' gpu_capacity ({by_name[model.host].gpu_capacity:g}), so it could "
                "never start there"
            )
        elif sum(model.gpu_memory <= host.gpu_capacity for host in hosts) < model.hosts:
            problems.append(
                f"{where}: field 'gpu_memory': {model.gpu_memory:g} fits the gpu_capacity of fewer "
                f"than {model.hosts} host(s), so it could never start"
            )
