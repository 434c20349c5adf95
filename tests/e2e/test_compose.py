"""The compose deployment for real, as the README runs it: `compose up` builds the gateway image
(from the local Debian base: no registry here), a cold request through the published port starts a
fake model on the internal network, and `scripts/compose-down` takes everything away."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.stack import FAKE_IMAGE, REPO, docker, fake_model, free_port, toml_value

pytestmark = pytest.mark.e2e


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)",
                pytrace=False)


def http(method: str, url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def deployment(tmp_path):
    """A compose project in tmp_path (its own config, networks, subnet and published port)."""
    project = f"wakerci{os.getpid()}"
    (tmp_path / "config").mkdir()
    model = fake_model("tiny", load_delay=0.3)
    lines = ["[waker]", f'name = "{project}"', "[[model]]", *(f"{k} = {toml_value(v)}" for k, v in model.items())]
    (tmp_path / "config" / "models.toml").write_text("\n".join(lines) + "\n")
    port = free_port()
    env = {**os.environ, "PWD": str(tmp_path), "WAKER_PUBLISH": f"127.0.0.1:{port}",
           "WAKER_BASE_IMAGE": "waker-test-base:bookworm", "WAKER_NETWORK": f"{project}-models",
           "WAKER_EGRESS": f"{project}-egress", "WAKER_SUBNET": "172.30.193"}
    compose = [*compose_command(), "-f", str(REPO / "compose.yaml"), "-p", project]
    up = subprocess.run([*compose, "up", "-d", "--build"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)
    assert up.returncode == 0, f"compose up failed:\n{up.stdout}\n{up.stderr}"
    try:
        yield project, f"http://127.0.0.1:{port}", compose, env
    finally:
        down = subprocess.run([str(REPO / "scripts" / "compose-down"), "-v"], env={**env, "COMPOSE_PROJECT_NAME": project},
                              capture_output=True, text=True, timeout=300)
        leftovers = docker("ps", "-aq", "--filter", f"label=io.waker.stack={project}").split()
        if leftovers:
            docker("rm", "-f", *leftovers, check=False)
        assert down.returncode == 0, f"compose-down failed:\n{down.stdout}\n{down.stderr}"


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if http("GET", f"{url}/healthz", timeout=2)[0] == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail("the gateway did not answer /healthz within 90 s of compose up")


def test_compose_up_cold_request_through_the_gateway_then_down(deployment):
    project, url, compose, env = deployment
    wait_healthy(url)
    status, body = http("POST", f"{url}/v1/chat/completions",
                        {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}, timeout=120)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"]

    # The model publishes nothing: it sits on the internal network at its fixed address (and on the
    # egress network, to download), and only the gateway reaches it.
    model = json.loads(docker("inspect", f"{project}-tiny"))[0]
    assert model["Config"]["Image"] == FAKE_IMAGE and model["HostConfig"]["PortBindings"] in (None, {})
    networks = model["NetworkSettings"]["Networks"]
    assert networks[f"{project}-models"]["IPAddress"] == "172.30.193.128"
    assert set(networks) == {f"{project}-models", f"{project}-egress"}
    internal = json.loads(docker("network", "inspect", f"{project}-models"))[0]
    assert internal["Internal"] is True

    # Only the proxy holds the Docker socket; through it the gateway cannot touch what it does not manage.
    gateway = subprocess.run([*compose, "ps", "-q", "gateway"], env=env, capture_output=True, text=True,
                             cwd=REPO).stdout.strip()
    mounts = {m["Source"] for m in json.loads(docker("inspect", gateway))[0]["Mounts"]}
    assert "/var/run/docker.sock" not in mounts
    probe = ("import http.client, socket\n"
             "class C(http.client.HTTPConnection):\n"
             "    def connect(self):\n"
             "        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect('/run/docker-proxy/docker.sock')\n"
             f"c = C('docker'); c.request('POST', '/containers/{gateway}/stop'); r = c.getresponse()\n"
             "print(r.status, r.read().decode())\n")
    refused = docker("exec", gateway, "python3", "-c", probe)
    assert refused.startswith("403") and "not managed by the waker" in refused

    # The admin CLI inside the container sees the config the waker runs (WAKER_CONFIG, WAKER_SET).
    status_line = docker("exec", gateway, "waker", "status")
    assert "tiny" in status_line and "ready" in status_line
