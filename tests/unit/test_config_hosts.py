"""`[[host]]` entries and a model's `host` / `hosts` (issue 17): read, checked, and absent = unchanged."""

import textwrap
import tomllib
from pathlib import Path

import pytest

from tests.unit.test_config import run_cli
from waker.config.hosts import DockerScheme, probe_images
from waker.config.schema import load_config
from waker.errors import ConfigError

TWO_SPARKS = """
[scheduler]
gpu_capacity = 0.9

[[host]]
name = "spark1"
nccl_socket_ifname = "enp1s0f1np1"
ucx_net_devices = "enp1s0f1np1"
gloo_socket_ifname = "enp1s0f1np1"
tp_socket_ifname = "enp1s0f1np1"
nccl_ib_hca = "rocep1s0f1,roceP2p1s0f1"
vllm_host_ip = "192.168.100.1"

[[host]]
name = "spark2"
docker_host = "ssh://admin@spark2"
address = "192.168.100.2"
gpu_capacity = 0.8
memory_floor = "6GiB"
memory_probe_image = "busybox:1.37"
nccl_socket_ifname = "enP2p1s0f1np1"
vllm_host_ip = "192.168.100.2"

[[host]]
name = "lab"
docker_host = "tcp://lab.example:2376"
address = "lab.example"
tls_ca = "certs/ca.pem"
tls_cert = "certs/cert.pem"
tls_key = "certs/key.pem"

[[model]]
id = "small"
image = "i"
host = "spark2"
gpu_memory = 0.5

[[model]]
id = "big"
image = "i"
hosts = 2
host = "spark1"
gpu_memory = 0.85

[[model]]
id = "anywhere"
image = "i"
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "models.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value.problems


def test_two_sparks_are_read_with_their_engines_budgets_and_links(tmp_path):
    config = load(tmp_path, TWO_SPARKS)
    spark1, spark2, lab = config.hosts
    assert config.placement_hosts == config.hosts
    assert (spark1.name, spark1.docker.scheme, spark1.docker.url, spark1.address) == (
        "spark1",
        DockerScheme.UNIX,
        "",
        "127.0.0.1",
    )
    assert spark1.gpu_capacity == 0.9 and spark2.gpu_capacity == 0.8  # [scheduler]'s is the default
    assert (spark2.docker.scheme, spark2.docker.url, spark2.address) == (
        DockerScheme.SSH,
        "ssh://admin@spark2",
        "192.168.100.2",
    )
    assert dict(spark1.interconnect.env()) == {
        "NCCL_SOCKET_IFNAME": "enp1s0f1np1",
        "UCX_NET_DEVICES": "enp1s0f1np1",
        "GLOO_SOCKET_IFNAME": "enp1s0f1np1",
        "TP_SOCKET_IFNAME": "enp1s0f1np1",
        "NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1",
        "VLLM_HOST_IP": "192.168.100.1",
    }
    assert dict(spark2.interconnect.env()) == {"NCCL_SOCKET_IFNAME": "enP2p1s0f1np1", "VLLM_HOST_IP": "192.168.100.2"}
    assert lab.docker.scheme == DockerScheme.TCP and lab.docker.tls is not None
    assert lab.docker.tls.ca == tmp_path / "certs/ca.pem" and lab.docker.tls.key == tmp_path / "certs/key.pem"
    assert (spark1.memory_floor, spark2.memory_floor) == (None, 6 * 2**30)  # None: [scheduler]'s
    assert probe_images(spark2, ("vllm:1",)) == ("busybox:1.37",)
    assert probe_images(spark1, ("vllm:1", "vllm:2", "vllm:1")) == ("vllm:1", "vllm:2")  # the models', once each
    small, big, anywhere = config.models
    assert (small.host, small.hosts) == ("spark2", 1)
    assert (big.host, big.hosts) == ("spark1", 2)
    assert (anywhere.host, anywhere.hosts) == ("", 1)


def test_without_hosts_there_is_one_implicit_local_host(tmp_path):
    config = load(
        tmp_path,
        '[waker]\ndocker_host = "unix:///run/x.sock"\n[scheduler]\ngpu_capacity = 0.7\n'
        '[[model]]\nid = "m"\nimage = "i"\nhost = "local"\n',
    )
    assert config.hosts == ()
    [host] = config.placement_hosts
    assert (host.name, host.docker.scheme, host.docker.url, host.gpu_capacity, host.address) == (
        "local",
        DockerScheme.AS_GIVEN,
        "unix:///run/x.sock",
        0.7,
        "127.0.0.1",
    )
    assert host.interconnect.env() == ()
    assert config.models[0].host == "local"


def test_a_socket_path_is_a_unix_docker_host(tmp_path):
    config = load(tmp_path, '[[host]]\nname = "a"\ndocker_host = "/run/docker-2.sock"\n')
    assert config.hosts[0].docker.url == "unix:///run/docker-2.sock"


TWO_HOSTS = '[[host]]\nname = "a"\n[[host]]\nname = "b"\ndocker_host = "ssh://b"\naddress = "10.0.0.2"\n'
SMALL_A = '[[host]]\nname = "a"\ngpu_capacity = 0.5\n[[host]]\nname = "b"\ndocker_host = "ssh://b"\naddress = "b"\n'
BROKEN = [
    (
        TWO_HOSTS + '[[model]]\nid = "m"\nimage = "i"\nhost = "c"',
        ["model 'm'", "field 'host'", "no [[host]] is named 'c'", "the hosts are a, b"],
    ),
    ('[[model]]\nid = "m"\nimage = "i"\nhost = "spark2"', ["no [[host]] is named 'spark2'", "the hosts are local"]),
    (
        '[[host]]\nname = "a"\n[[model]]\nid = "m"\nimage = "i"\nhosts = 2',
        ["model 'm'", "field 'hosts'", "2 hosts need as many [[host]] entries", "1 is declared"],
    ),
    ('[[model]]\nid = "m"\nimage = "i"\nhosts = 2', ["field 'hosts'", "no [[host]] is declared"]),
    ('[[model]]\nid = "m"\nimage = "i"\nhosts = 3', ["field 'hosts'", "expected 1, or 2"]),
    (
        '[[host]]\nname = "a"\n[[host]]\nname = "a"\ndocker_host = "/run/other.sock"',
        ["host 'a'", "name 'a' is already used by host 'a' (entry #1)"],
    ),
    (
        '[[host]]\nname = "a"\ndocker_host = "/run/d.sock"\n[[host]]\nname = "b"\ndocker_host = "unix:///run/d.sock"',
        ["host 'b'", "docker_host 'unix:///run/d.sock' is already used by host 'a'"],
    ),
    (
        SMALL_A + '[[model]]\nid = "m"\nimage = "i"\nhost = "a"\ngpu_memory = 0.6',
        ["model 'm'", "field 'gpu_memory'", "more than host 'a' gpu_capacity (0.5)", "never start there"],
    ),
    (
        SMALL_A + '[[model]]\nid = "m"\nimage = "i"\nhosts = 2\ngpu_memory = 0.6',
        ["model 'm'", "fits the gpu_capacity of fewer than 2 host(s)"],
    ),
    (
        '[[host]]\nname = "a"\ngpu_capacity = 0.5\n[[model]]\nid = "m"\nimage = "i"\ngpu_memory = 0.6',
        ["fits the gpu_capacity of fewer than 1 host(s)"],
    ),
    ('[[host]]\nname = "Spark One"', ["host 'Spark One'", "field 'name'", "not a valid host name"]),
    ('[[host]]\ndocker_host = "/run/d.sock"', ["host '#1'", "field 'name' is required"]),
    ('[[host]]\nname = "a"\ndocker_host = "http://spark2"', ["host 'a'", "field 'docker_host'", "ssh://user@host"]),
    ('[[host]]\nname = "a"\ndocker_host = "as-given://x"', ["host 'a'", "field 'docker_host'", "ssh://user@host"]),
    (
        '[[host]]\nname = "a"\ndocker_host = "ssh://admin@spark2 -p 2"',
        ["field 'docker_host'", "ssh://[user@]host[:port]"],
    ),
    ('[[host]]\nname = "a"\ndocker_host = "ssh://spark2"', ["host 'a'", "field 'address' is required for a remote"]),
    (
        '[[host]]\nname = "a"\ndocker_host = "tcp://spark2:2376"\naddress = "spark2"',
        ["host 'a'", "tcp:// docker_host needs tls_ca, tls_cert and tls_key", "ssh://"],
    ),
    ('[[host]]\nname = "a"\ntls_ca = "ca.pem"', ["tls_ca, tls_cert and tls_key are only for a tcp://"]),
    ('[[host]]\nname = "a"\nnccl_socket_ifname = "enp1s0 eth0"', ["field 'nccl_socket_ifname'", "separated by commas"]),
    ('[[host]]\nname = "a"\nvllm_host_ip = "spark1"', ["field 'vllm_host_ip'", "IPv4"]),
    ('[[host]]\nname = "a"\ngpu_capacity = 0', ["host 'a'", "field 'gpu_capacity'", "positive"]),
    ('[[host]]\nname = "a"\ncolour = "red"', ["host 'a'", "unknown field 'colour'"]),
    ('[[host]]\nname = "a"\nmemory_floor = "lots"', ["host 'a'", "field 'memory_floor'", "expected a size"]),
    ('[[host]]\nname = "a"\nmemory_probe_image = 3', ["host 'a'", "field 'memory_probe_image'", "expected a string"]),
    (
        '[waker]\ndocker_host = "unix:///x.sock"\n[[host]]\nname = "a"',
        ["[waker] docker_host and [[host]] are both set"],
    ),
    ('host = "x"', ["'host' must be an array of tables, written [[host]]"]),
    (
        '[waker]\nnetwork = "models"\nmodel_ip_base = "172.30.0.10"\n[[host]]\nname = "a"',
        ["[[host]] entries need the host deployment", "[waker] network"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_bad_hosts_are_refused_saying_what_and_where(tmp_path, text, expected):
    found = problems(tmp_path, text)
    assert any(all(part in line for part in expected) for line in found), found


def test_every_host_problem_is_reported_at_once(tmp_path):
    found = problems(
        tmp_path,
        '[[host]]\nname = "a"\ndocker_host = "ssh://x"\n[[host]]\nname = "a"\n'
        '[[model]]\nid = "m"\nimage = "i"\nhost = "z"',
    )
    assert len(found) == 3, found  # a's missing address, the second 'a', the unknown host 'z'


def test_the_resolved_config_keeps_the_hosts_and_each_model_s_host(tmp_path):
    (tmp_path / "certs").mkdir()
    original = load(tmp_path, TWO_SPARKS)
    result = run_cli("check", "--resolved", "--config", str(original.path))
    assert result.returncode == 0, result.stderr
    again_path = tmp_path / "again.toml"
    again_path.write_text(result.stdout)
    again = load_config(again_path)
    assert again.hosts == original.hosts
    assert sorted(again.models, key=lambda m: m.id) == sorted(original.models, key=lambda m: m.id)
    assert tomllib.loads(result.stdout)["host"][1]["docker_host"] == "ssh://admin@spark2"
