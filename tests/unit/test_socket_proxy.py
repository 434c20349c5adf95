import json

import pytest

from waker.socket_proxy import ON_CONTAINER, Refused, check

MANAGED = {"Image": "i", "Labels": {"io.waker.managed": "true"}, "HostConfig": {"Binds": ["/data:/models"]}}


@pytest.mark.parametrize("method, target", [
    ("GET", "/v1.41/_ping"), ("GET", "/v1.41/events?filters=%7B%7D"), ("GET", "/v1.41/containers/json?all=1"),
    ("GET", "/v1.41/containers/abc123/json"), ("GET", "/v1.41/containers/abc/logs?tail=5"),
    ("POST", "/v1.41/containers/abc/start"), ("POST", "/v1.41/containers/abc/stop?t=5"),
    ("DELETE", "/v1.41/containers/abc?force=1"), ("GET", "/v1.41/images/waker-fake-vllm:test/json"),
    ("POST", "/v1.41/images/create?fromImage=x"),
])
def test_the_calls_the_waker_makes_pass(method, target):
    check(method, target, b"")


@pytest.mark.parametrize("method, target", [
    ("POST", "/v1.41/containers/abc/exec"), ("POST", "/v1.41/exec/abc/start"), ("GET", "/v1.41/volumes"),
    ("POST", "/v1.41/containers/abc/kill"), ("DELETE", "/v1.41/images/x"), ("POST", "/v1.41/build"),
    ("POST", "/v1.41/swarm/init"), ("GET", "/v1.41/secrets"), ("POST", "/v1.41/containers/abc/attach"),
    ("PUT", "/v1.41/containers/abc/archive"), ("GET", "/v1.41/containers/abc/archive?path=/"),
])
def test_anything_else_is_refused(method, target):
    with pytest.raises(Refused, match="not a call the waker makes"):
        check(method, target, b"")


@pytest.mark.parametrize("change, reason", [
    ({"Labels": {}}, "labelled"), ({"HostConfig": {"Privileged": True}}, "privileged"),
    ({"HostConfig": {"CapAdd": ["SYS_ADMIN"]}}, "capabilities"), ({"HostConfig": {"PidMode": "host"}}, "PidMode"),
    ({"HostConfig": {"NetworkMode": "host"}}, "NetworkMode"), ({"HostConfig": {"Binds": ["/:/host"]}}, "mounting /"),
    ({"HostConfig": {"Binds": ["/var/run/docker.sock:/s"]}}, "docker.sock"),
])
def test_dangerous_creates_are_refused(change, reason):
    check("POST", "/v1.41/containers/create?name=x", json.dumps(MANAGED).encode())
    with pytest.raises(Refused, match=reason):
        check("POST", "/v1.41/containers/create?name=x", json.dumps({**MANAGED, **change}).encode())


def test_container_calls_name_their_container_but_create_and_list_do_not():
    assert ON_CONTAINER.match("POST /v1.41/containers/abc/stop?t=1").group(1) == "abc"
    assert ON_CONTAINER.match("DELETE /v1.41/containers/abc?force=1").group(1) == "abc"
    assert ON_CONTAINER.match("POST /v1.41/containers/create?name=x") is None
    assert ON_CONTAINER.match("GET /v1.41/containers/json?all=1") is None
