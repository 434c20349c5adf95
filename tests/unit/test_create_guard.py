"""The socket proxy creates exactly the container the config gives a model, and nothing a request adds.

The property test plays the probe's tricks (security-probe.md, #11) at random: keys in another case or
written with unicode escapes, repeated keys (Docker's decoder keeps the last), fields moved, added or
nested where Docker reads them. Whatever comes, the proxy refuses it, or sends Docker the config's
own container."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waker.config.schema import load_config
from waker.docker.create_guard import checked_create, difference, strict_json
from waker.docker.spec import container_name, container_spec
from waker.errors import ProxyRefused

CONFIG = """
[waker]
name = "unit"
network = "models"
model_ip_base = "172.30.92.128"
egress_network = "egress"
[[model]]
id = "alpha"
image = "vllm/vllm-openai:v0.11"
command = ["--model", "/models/alpha", "--served-model-name", "alpha"]
volumes = ["/srv/models:/models:ro"]
env = { HF_HOME = "/models/hf" }
shm_size = "1g"
[[model]]
id = "beta"
image = "vllm/vllm-openai:v0.11"
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("guard") / "models.toml"
    path.write_text(CONFIG)
    return load_config(path)


def spec_of(config, model_id: str = "alpha") -> dict[str, Any]:
    waker = config.waker
    return container_spec(config.model(model_id), waker.name, waker.network, waker.egress_network)


def create(config, body: bytes | dict, query: str = "name=unit-alpha") -> tuple[str, bytes]:
    return checked_create(config, query, body if isinstance(body, bytes) else json.dumps(body).encode())


def test_the_configs_own_container_goes_to_docker_as_the_proxy_writes_it(config):
    query, body = create(config, spec_of(config))
    assert query == "name=unit-alpha" and json.loads(body) == spec_of(config)
    assert container_name("unit", "alpha") == "unit-alpha"


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda s: s["HostConfig"].update(Privileged=True), "HostConfig.Privileged is not in it"),
        (lambda s: s.update(hostconfig={"Privileged": True}), "hostconfig is not in it"),
        (lambda s: s["HostConfig"].update(Binds=["/:/host"]), "HostConfig.Binds differs"),
        (lambda s: s["HostConfig"].update(Mounts=[{"Type": "bind", "Source": "/", "Target": "/h"}]), "Mounts"),
        (lambda s: s["HostConfig"].update(NetworkMode="host"), "HostConfig.NetworkMode differs"),
        (lambda s: s["HostConfig"].update(SecurityOpt=["seccomp=unconfined"]), "SecurityOpt"),
        (lambda s: s["HostConfig"].update(DeviceCgroupRules=["b *:* rwm"]), "DeviceCgroupRules"),
        (lambda s: s["HostConfig"].update(CgroupnsMode="host"), "CgroupnsMode"),
        (lambda s: s.update(Image="attacker/image"), "Image differs"),
        (lambda s: s.update(Cmd=["sh", "-c", "id"]), "Cmd differs"),
        (lambda s: s["Labels"].update({"io.waker.role": "gateway"}), "Labels.io.waker.role is not in it"),
        (lambda s: s.update(labels={"io.waker.role": "gateway"}), "labels is not in it"),
    ],
)
def test_anything_the_config_does_not_give_is_refused_naming_where(config, change, reason):
    spec = spec_of(config)
    change(spec)
    with pytest.raises(ProxyRefused, match="not the container") as refused:
        create(config, spec)
    assert reason in str(refused.value) and "waker reload" in str(refused.value)


@pytest.mark.parametrize(
    "body, query, reason",
    [
        (b'{"Image": "x"}', "name=unit-alpha", "only a model's container"),
        (b'{"Labels": {"io.waker.model": "zeta"}}', "name=unit-zeta", "has no model 'zeta'"),
        (
            b'{"Labels": {"io.waker.model": "alpha", "io.waker.ray-node": "head"}}',
            "name=unit-alpha",
            "two hosts",
        ),
        (b'{"Labels": {"io.waker.model": "alpha"}}', "name=other", "is named 'unit-alpha'"),
        (b'{"Labels": {"io.waker.model": "alpha"}}', "name=unit-alpha&name=x", "is named 'unit-alpha'"),
        (b'{"Labels": {"io.waker.model": "alpha"}}', "", "is named 'unit-alpha'"),
        (b"{not json", "name=unit-alpha", "not JSON"),
        (b'{"a": NaN}', "name=unit-alpha", "NaN is not JSON"),
        (b'{"a": 1, "a": 2}', "name=unit-alpha", "a key appears twice"),
        (b'"\xff"', "name=unit-alpha", "not JSON"),
    ],
)
def test_creates_that_name_no_model_or_cannot_be_read_are_refused(config, body, query, reason):
    with pytest.raises(ProxyRefused, match=reason):
        create(config, body, query)


def test_each_model_has_its_own_container_only(config):
    with pytest.raises(ProxyRefused, match="not the container"):
        create(config, {**spec_of(config, "beta"), "Labels": spec_of(config)["Labels"]})
    assert json.loads(create(config, spec_of(config, "beta"), "name=unit-beta")[1]) == spec_of(config, "beta")


def test_numbers_python_calls_equal_go_to_docker_as_the_config_has_them(config):
    """1.0 == 1 in Python: the proxy sends its own copy, so Docker gets the config's integer."""
    spec = spec_of(config)
    spec["HostConfig"]["ShmSize"] = float(spec["HostConfig"]["ShmSize"])
    assert json.loads(create(config, spec)[1])["HostConfig"]["ShmSize"] == spec_of(config)["HostConfig"]["ShmSize"]
    assert b'"ShmSize":1073741824,' in create(config, spec)[1]


def test_a_host_deployment_publishes_on_a_configured_address_only(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[waker]\nname = "h"\n[[model]]\nid = "m"\nimage = "i"\n')
    config = load_config(path)
    spec = container_spec(config.model("m"), "h")
    create(config, spec, "name=h-m")
    spec["HostConfig"]["PortBindings"] = {
        port: [{**binding[0], "HostIp": "0.0.0.0"}] for port, binding in spec["HostConfig"]["PortBindings"].items()
    }
    with pytest.raises(ProxyRefused, match="PortBindings"):
        create(config, spec, "name=h-m")


def test_difference_names_the_first_place_two_bodies_part():
    assert difference({"a": {"b": 1}}, {"a": {"b": 2}}) == "a.b differs"
    assert difference({"a": 1}, {"a": 1, "b": 2}) == "b is missing"
    assert difference([1], [2]) == "the body differs"


def test_strict_json_reads_nested_repeats_too():
    with pytest.raises(ProxyRefused, match="twice"):
        strict_json(b'{"HostConfig": {"Privileged": false, "Privileged": true}}', "x")


# ---- the property: refused, or the config's own container -------------------------------------------


def _recase(key: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in key)


def _escape(key: str, rng: random.Random) -> str:
    """The key written with some letters as JSON unicode escapes (Docker reads them as the letters)."""
    return "".join(f"\\u{ord(c):04x}" if rng.random() < 0.5 else c for c in key)


def _encode(value: Any, rng: random.Random, tricks: dict[str, float]) -> str:
    """`value` as JSON text, its keys recased, escaped or repeated as `tricks` says how often."""
    if isinstance(value, dict):
        members = []
        for key, item in value.items():
            name = _recase(key, rng) if rng.random() < tricks["recase"] else key
            text = json.dumps(name)[1:-1]
            if rng.random() < tricks["escape"]:
                text = _escape(name, rng)
            if rng.random() < tricks["repeat"]:
                members.append(f'"{text}":{json.dumps(rng.choice([True, "host", ["/:/h"], 0]))}')
            members.append(f'"{text}":{_encode(item, rng, tricks)}')
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(item, rng, tricks) for item in value) + "]"
    return json.dumps(value)


DANGEROUS = [
    ("HostConfig", "Privileged", True),
    ("HostConfig", "CapAdd", ["ALL"]),
    ("HostConfig", "PidMode", "host"),
    ("HostConfig", "NetworkMode", "host"),
    ("HostConfig", "Binds", ["/:/host", "/var/run:/r"]),
    ("HostConfig", "Mounts", [{"Type": "bind", "Source": "/", "Target": "/host"}]),
    ("HostConfig", "Devices", [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}]),
    ("HostConfig", "SecurityOpt", ["apparmor=unconfined"]),
    ("HostConfig", "UsernsMode", "host"),
    ("Labels", "io.waker.role", "gateway"),
    (None, "User", "0"),
    (None, "Image", "attacker/root:latest"),
    (None, "Entrypoint", ["/bin/sh"]),
]


@settings(max_examples=1000)
@given(
    seed=st.integers(0, 2**32 - 1),
    tricks=st.fixed_dictionaries(
        {
            "recase": st.sampled_from([0, 0.1, 1]),
            "escape": st.sampled_from([0, 0.2]),
            "repeat": st.sampled_from([0, 0.1]),
        }
    ),
    added=st.lists(st.sampled_from(DANGEROUS), max_size=3),
    nest_in=st.sampled_from(["", "hostconfig", "HOSTCONFIG", "Hostconfig"]),
)
def test_a_create_body_is_refused_or_becomes_the_configs_container(config, seed, tricks, added, nest_in):
    rng = random.Random(seed)
    spec = spec_of(config)
    for section, key, value in added:
        target = spec.setdefault(section, {}) if section else spec
        target[key] = value
    if nest_in:
        spec[nest_in] = {"Privileged": True}
    body = _encode(spec, rng, tricks).encode()
    try:
        query, sent = create(config, body)
    except ProxyRefused:
        return
    assert query == "name=unit-alpha"
    assert sent == json.dumps(spec_of(config), separators=(",", ":")).encode()
