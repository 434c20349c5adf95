"""The waker's Docker adapter on a Docker engine of another host (issue 17): `ssh://` through the OpenSSH
client and `docker system dial-stdio`, as the docker CLI does, and `tcp://` with TLS client certificates.

The other host is engine 2 (tests/e2e/second_engine.py). For ssh://, a real OpenSSH server runs on a
loopback port as root (Debian's openssh-server, started by the test with its own host key, config and
authorized key), and its sessions' DOCKER_HOST is engine 2, so `docker system dial-stdio` over it
reaches engine 2 exactly as it would reach the engine of a second box. The client side is the real
`ssh`, configured the way a user would configure it (an ssh_config with the key, port and known host),
given to it by a wrapper named `ssh` first on PATH, since OpenSSH reads ~/.ssh from the passwd entry.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import openai
import pytest
from structlog.testing import capture_logs

from tests.e2e.stack import FAKE_IMAGE, docker, fake_model, free_port
from tests.eventually import eventually
from waker.config.hosts import DockerEndpoint, DockerScheme, TlsFiles
from waker.docker.runtime import DockerRuntime
from waker.docker.spec import LABEL_MANAGED, LABEL_MODEL, LABEL_STACK
from waker.errors import DockerError

pytestmark = pytest.mark.e2e

SSHD = "/usr/sbin/sshd"


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def ssh_host(second_engine, tmp_path_factory):
    """An OpenSSH server on 127.0.0.1 whose sessions use engine 2, and an `ssh` that knows it as
    `spark2-test` (and as `stranger-test`, a host whose key it does not know)."""
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} is missing: apt-get install openssh-server (scripts/test installs it)", pytrace=False)
    tmp = tmp_path_factory.mktemp("ssh")
    host_key = _keygen(tmp / "host_key")
    (tmp / "authorized_keys").write_text(_keygen(tmp / "client_key") + "\n")
    port = free_port()
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp}/host_key\nPidFile {tmp}/sshd.pid\n"
        f"AuthorizedKeysFile {tmp}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSetEnv DOCKER_HOST={second_engine.host}\n"
    )
    (tmp / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (tmp / "ssh_config").write_text(
        f"Host spark2-test stranger-test\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
        f"  IdentityFile {tmp}/client_key\n  StrictHostKeyChecking yes\n"
        f"Host spark2-test\n  UserKnownHostsFile {tmp}/known_hosts\n"
        f"Host stranger-test\n  UserKnownHostsFile /dev/null\n"
    )
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {tmp}/ssh_config "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    sshd = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        eventually(
            lambda: (
                subprocess.run([bin_dir / "ssh", "spark2-test", "true"], check=False, capture_output=True).returncode
                == 0
            ),
            20,
            "sshd accepting the key",
        )
        yield bin_dir
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


@pytest.fixture
def ssh_on_path(ssh_host, monkeypatch):
    monkeypatch.setenv("PATH", f"{ssh_host}:{os.environ['PATH']}")


def _labelled_fake(engine, stack: str, name: str) -> str:
    """A fake model on engine 2, once it serves: until its SIGTERM handler is set, process 1 of a
    container ignores SIGTERM and a stop would wait for Docker's SIGKILL."""
    container_id = engine.docker(
        "run",
        "-d",
        "--name",
        name,
        f"--label={LABEL_MANAGED}=true",
        f"--label={LABEL_STACK}={stack}",
        f"--label={LABEL_MODEL}={name}",
        FAKE_IMAGE,
        "serve",
        f"fake/{name}",
    ).strip()
    eventually(lambda: "serving" in engine.logs(name), 20, f"{name} serving")
    return container_id


async def _drive(runtime: DockerRuntime, container_id: str) -> list[str]:
    """What the waker does with an engine: list, watch events, stop, start. Returns the events seen."""
    [info] = await runtime.managed_containers()
    assert (info.id, info.running) == (container_id, True)
    seen: list[str] = []
    async with runtime.event_stream() as stream:
        await runtime.stop(container_id, timeout=5)
        await runtime.start(container_id)
        async with asyncio.timeout(30):
            async for event in stream:
                seen.append(event["status"])
                if event["status"] == "start":
                    break
    assert (await runtime.inspect(container_id)).running
    return seen


async def test_the_adapter_drives_an_engine_over_ssh(second_engine, ssh_on_path):
    stack, name = f"t{uuid.uuid4().hex[:10]}", f"m{uuid.uuid4().hex[:8]}"
    container_id = _labelled_fake(second_engine, stack, name)
    assert docker("ps", "-aq", "--filter", f"name=^{name}$") == ""  # on engine 2 only, reached through sshd
    runtime = DockerRuntime(stack, DockerEndpoint(DockerScheme.SSH, "ssh://root@spark2-test"))
    try:
        seen = await _drive(runtime, container_id)
        assert {"die", "stop", "start"} <= set(seen), seen
    finally:
        await runtime.close()
        second_engine.docker("rm", "-f", name)


async def test_an_ssh_host_whose_key_is_unknown_fails_clearly_and_logs_why(ssh_on_path):
    runtime = DockerRuntime("any", DockerEndpoint(DockerScheme.SSH, "ssh://stranger-test"))
    with capture_logs() as logs:
        try:
            with pytest.raises(
                DockerError, match="cannot list containers: Cannot connect to Docker Engine via ssh://stranger-test "
            ):
                await runtime.managed_containers()
        finally:
            await runtime.close()  # waits for the ssh processes, whose complaints are logged
    failures = [e for e in logs if e["event"] == "docker_ssh_failed"]
    assert failures and failures[0]["docker_host"] == "ssh://stranger-test", logs
    assert "Host key verification failed" in failures[0]["ssh_said"]


def _tls(engine, cert: str = "cert.pem", key: str = "key.pem") -> DockerEndpoint:
    tls = engine.tls_dir
    return DockerEndpoint(
        DockerScheme.TCP, f"tcp://127.0.0.1:{engine.tls_port}", TlsFiles(tls / "ca.pem", tls / cert, tls / key)
    )


async def test_the_adapter_drives_an_engine_over_tcp_with_tls(second_engine):
    stack, name = f"t{uuid.uuid4().hex[:10]}", f"m{uuid.uuid4().hex[:8]}"
    container_id = _labelled_fake(second_engine, stack, name)
    runtime = DockerRuntime(stack, _tls(second_engine))
    try:
        seen = await _drive(runtime, container_id)
        assert {"die", "stop", "start"} <= set(seen), seen
    finally:
        await runtime.close()
        second_engine.docker("rm", "-f", name)


async def test_a_tcp_engine_refuses_a_client_without_its_certificate(second_engine):
    # The server's own certificate is no client certificate: the engine refuses the TLS handshake.
    runtime = DockerRuntime("any", _tls(second_engine, cert="server-cert.pem", key="server-key.pem"))
    try:
        with pytest.raises(
            DockerError,
            match=r"cannot list containers: Cannot connect to Docker Engine via "
            r"https://127\.0\.0\.1:\d+ .*bad certificate",
        ):
            await runtime.managed_containers()
    finally:
        await runtime.close()


def test_unreadable_tls_files_are_a_docker_error_naming_the_settings(tmp_path):
    endpoint = DockerEndpoint(
        DockerScheme.TCP,
        "tcp://127.0.0.1:2376",
        TlsFiles(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"),
    )
    with pytest.raises(DockerError, match="cannot use the TLS files of tcp://127.0.0.1:2376: .*tls_ca, tls_cert"):
        DockerRuntime("any", endpoint)


async def test_the_gateway_serves_a_model_it_started_on_a_host_reached_over_ssh(ssh_host, make_stack, second_engine):
    """The whole path over ssh://: the waker creates and starts the container on the other host's engine,
    nginx reaches it at that host's address, the official SDK gets its answer, a stop ends it there."""
    hosts = [{"name": "one"}, {"name": "spark2", "docker_host": "ssh://spark2-test", "address": "127.0.0.2"}]
    stack = make_stack(
        [fake_model("far", host="spark2", gpu_memory=0.5)],
        hosts=hosts,
        env={"PATH": f"{ssh_host}:{os.environ['PATH']}"},
    )
    try:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=60, max_retries=0)
        reply = await client.chat.completions.create(
            model="far", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        await client.close()
        assert reply.model == "far"
        labels = f"label=io.waker.stack={stack.name}"
        assert (
            second_engine.docker("ps", "-q", "--filter", labels).strip()
            and not docker("ps", "-q", "--filter", labels).strip()
        )
        stopped = stack.cli("stop", "far")
        assert stopped.returncode == 0, stopped.stderr
        assert not second_engine.docker("ps", "-q", "--filter", labels).strip()
    finally:
        second_engine.remove_all_containers()
