"""The compose deployment for real, as the README runs it: `compose up` builds the image (from the
local Debian base: no registry here), a cold request through the published port starts a fake model
on the internal network, the waker container is killed mid-stream without the gateway noticing, and
`scripts/compose-down` takes everything away."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.stack import FAKE_IMAGE, REPO, docker, fake_model, free_port, toml_value
from tests.eventually import eventually

pytestmark = pytest.mark.e2e


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)", pytrace=False
    )


def http(method: str, url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


STREAM_TOKENS = 200  # at 20 tokens/s: a 10 s stream, long enough to kill and restart the waker under it


def model_table(model: dict) -> str:
    return "\n".join(["[[model]]", *(f"{k} = {toml_value(v)}" for k, v in model.items())]) + "\n"


def remove_stale_networks(subnet: str) -> None:
    """This test's networks left by an earlier run that was killed before its clean-up (no container
    on them): they would hold the fixed subnet, and Docker would refuse the new ones."""
    for name in docker("network", "ls", "--filter", "name=wakerci", "--format", "{{.Name}}").split():
        inspected = docker(
            "network",
            "inspect",
            name,
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}{{len .Containers}}",
            check=False,
        )
        subnets, _, attached = inspected.strip().rpartition(" ")
        if subnets.startswith(f"{subnet}.") and attached == "0":
            docker("network", "rm", name, check=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A compose project in a temporary directory (its own config, networks, subnet, published port
    and image tag, so that it can run beside another checkout's), shared by this module's tests."""
    tmp_path = tmp_path_factory.mktemp("compose")
    project = f"wakerci{os.getpid()}"
    (tmp_path / "config").mkdir()
    models = [
        fake_model("tiny", load_delay=0.3, extra=["--tokens-per-second", "20"]),
        fake_model("cold", load_delay=0.3),
    ]
    (tmp_path / "config" / "models.toml").write_text(
        f'[waker]\nname = "{project}"\n' + "".join(model_table(m) for m in models)
    )
    port = free_port()
    env = {
        **os.environ,
        "PWD": str(tmp_path),
        "WAKER_PUBLISH": f"127.0.0.1:{port}",
        "WAKER_BASE_IMAGE": "waker-test-base:bookworm",
        "WAKER_IMAGE": "waker-gateway:compose-test",
        "WAKER_NETWORK": f"{project}-models",
        "WAKER_EGRESS": f"{project}-egress",
        "WAKER_SUBNET": "172.30.193",
    }
    compose = [*compose_command(), "-f", str(REPO / "compose.yaml"), "-p", project]
    remove_stale_networks(env["WAKER_SUBNET"])
    try:
        up = subprocess.run(
            [*compose, "up", "-d", "--build"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert up.returncode == 0, f"compose up failed:\n{up.stdout}\n{up.stderr}"
        yield project, f"http://127.0.0.1:{port}", compose, env, tmp_path / "config" / "models.toml"
    finally:  # also after a failed up: it may have created the networks before failing
        down = subprocess.run(
            [str(REPO / "scripts" / "compose-down"), "-v"],
            env={**env, "COMPOSE_PROJECT_NAME": project},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        leftovers = docker("ps", "-aq", "--filter", f"label=io.waker.stack={project}").split()
        if leftovers:
            docker("rm", "-f", *leftovers, check=False)
        assert down.returncode == 0, f"compose-down failed:\n{down.stdout}\n{down.stderr}"


def healthz(url: str) -> int:
    try:
        return http("GET", f"{url}/healthz", timeout=2)[0]
    except (OSError, ValueError):
        return 0


def wait_healthy(url: str, what: str = "compose up") -> float:
    """Seconds until /healthz (nginx, answered by the waker) is 200."""
    start = time.monotonic()
    eventually(lambda: healthz(url) == 200, 90, f"/healthz answering 200 after {what}")
    return time.monotonic() - start


def container(compose: list[str], env: dict, service: str) -> str:
    return subprocess.run(
        [*compose, "ps", "-q", service], env=env, capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.strip()


# Run inside the waker container: one call through the socket proxy, printing "<status> <body>".
PROXY_CALL = (
    "import http.client, socket, sys\n"
    "class C(http.client.HTTPConnection):\n"
    "    def connect(self):\n"
    "        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect('/run/docker-proxy/docker.sock')\n"
    "c = C('docker'); c.request('POST', sys.argv[1]); r = c.getresponse()\n"
    "print(r.status, r.read().decode())\n"
)


def proxy_call(waker: str, path: str) -> str:
    return docker("exec", waker, "python3", "-c", PROXY_CALL, path)


def chat(url: str, model: str, **extra) -> tuple[int, dict]:
    return http(
        "POST",
        f"{url}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra},
        timeout=120,
    )


class Stream(threading.Thread):
    """A streamed chat completion read to its end in the background; `started` is set at its first token."""

    def __init__(self, url: str, model: str, tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.tokens = url, model, tokens
        self.started = threading.Event()
        self.lines: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {
            "model": self.model,
            "stream": True,
            "max_tokens": self.tokens,
            "messages": [{"role": "user", "content": "hello"}],
        }
        request = urllib.request.Request(
            f"{self.url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                for raw in response:
                    line = raw.decode().strip()
                    if line.startswith("data: "):
                        self.lines.append(line[len("data: ") :])
                        if '"content"' in line:
                            self.started.set()
        except (OSError, ValueError) as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            self.started.set()

    def content(self) -> list[str]:
        chunks = [json.loads(line) for line in self.lines if line != "[DONE]"]
        return [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")]


def test_compose_up_cold_request_through_the_gateway_then_down(deployment):
    project, url, compose, env, _ = deployment
    wait_healthy(url)
    status, body = http(
        "POST",
        f"{url}/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]},
        timeout=120,
    )
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

    # Only the proxy holds the Docker socket, and only the waker reaches the proxy; through it the waker
    # cannot touch what it does not manage: it may only send the gateway SIGHUP (a reload).
    gateway, waker, proxy = (container(compose, env, s) for s in ("gateway", "waker", "docker-proxy"))
    mounts = {m["Destination"] for m in json.loads(docker("inspect", gateway))[0]["Mounts"]}
    assert "/var/run/docker.sock" not in mounts and "/run/docker-proxy" not in mounts
    assert "/var/run/docker.sock" not in {m["Destination"] for m in json.loads(docker("inspect", waker))[0]["Mounts"]}
    refused = proxy_call(waker, f"/containers/{gateway}/stop")
    assert refused.startswith("403") and "not managed by the waker" in refused
    assert proxy_call(waker, f"/containers/{gateway}/kill?signal=HUP").startswith("204")
    for target, reason in (
        (gateway, "only signal=HUP"),
        (f"{project}-tiny", "is not the gateway"),
        (proxy, "is not the gateway"),
        (waker, "is not the gateway"),
    ):
        signal = "KILL" if target == gateway else "HUP"
        refused = proxy_call(waker, f"/containers/{target}/kill?signal={signal}")
        assert refused.startswith("403") and reason in refused, (target, refused)
    assert json.loads(docker("inspect", f"{project}-tiny"))[0]["State"]["Running"]

    # The admin CLI inside the container sees the config the waker runs (WAKER_CONFIG, WAKER_SET).
    status_line = docker("exec", waker, "waker", "status")
    assert "tiny" in status_line and "ready" in status_line


def test_killing_the_waker_leaves_streams_and_ready_models_alone(deployment):
    """The waker is the control plane only: `docker kill` of its container (SIGKILL, like the crash in
    issue 13) is invisible to clients of a ready model, and a cold start works once it is back."""
    _, url, compose, env, config = deployment
    wait_healthy(url)
    assert chat(url, "tiny", max_tokens=1)[0] == 200  # ready (the first test may already have woken it)
    gateway, waker = container(compose, env, "gateway"), container(compose, env, "waker")
    gateway_started = json.loads(docker("inspect", gateway))[0]["State"]["StartedAt"]

    stream = Stream(url, "tiny", STREAM_TOKENS)
    stream.start()
    assert stream.started.wait(30) and stream.error is None, stream.error
    docker("kill", waker)
    killed = time.monotonic()
    statuses: list[int] = []
    down_seen = False

    def ask_ready_model() -> None:
        # Both routings: njs reads the body (body routing) or the URL names the model (path routing).
        statuses.append(chat(url, "tiny", max_tokens=1)[0])
        statuses.append(http("POST", f"{url}/v1/tiny/completions", {"prompt": "hi", "max_tokens": 1})[0])

    # The waker stays down until nginx has been seen answering for it, and for 3 s at least; a loaded
    # machine may take longer than that to show it (60 s at most).
    while (not down_seen or time.monotonic() < killed + 3) and time.monotonic() < killed + 60:
        ask_ready_model()
        down_seen = down_seen or healthz(url) == 503  # nginx answers for the missing waker
        time.sleep(0.1)
    assert down_seen, "the waker never looked down: was it killed?"
    # `docker kill` counts as a manual stop for Docker's restart policy (a crash of the process inside
    # would be restarted by `restart: unless-stopped`), so the test starts it, as an operator would.
    docker("start", waker)
    back = threading.Thread(target=wait_healthy, args=(url, "docker start waker"), daemon=True)
    back.start()
    while back.is_alive():
        ask_ready_model()
    print(f"waker down {time.monotonic() - killed:.1f} s; {len(statuses)} requests to the ready model meanwhile")
    assert statuses and set(statuses) == {200}, statuses

    stream.join(60)
    assert not stream.is_alive() and stream.error is None, stream.error
    assert stream.lines[-1] == "[DONE]"
    assert stream.content() == [f"tok{i} " for i in range(STREAM_TOKENS)]
    assert json.loads(docker("inspect", gateway))[0]["State"]["StartedAt"] == gateway_started  # nginx never restarted

    # A cold start after the waker came back: the restarted waker adopted what runs and wakes the rest.
    status, body = chat(url, "cold", max_tokens=2)
    assert status == 200 and body["model"] == "cold", body

    # `waker reload` in the waker container re-renders nginx's config and reloads the gateway's nginx.
    config.write_text(config.read_text() + model_table(fake_model("added", load_delay=0.3)))
    assert "added" in docker("exec", waker, "waker", "reload")
    status, body = chat(url, "added", max_tokens=2)
    assert status == 200 and body["model"] == "added", body
    assert json.loads(docker("inspect", gateway))[0]["State"]["StartedAt"] == gateway_started
