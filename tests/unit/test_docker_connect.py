"""How the waker reaches an engine: the ssh command line for an ssh:// Docker host (the docker CLI's, never
a prompt), HTTP through that ssh's stdin and stdout (a fake ssh bridging to a fake engine here; tests/e2e/
test_remote_docker.py runs a real sshd), and Docker's own default for an empty docker_host."""

import json
import os
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.unit.fake_docker import STACK, managed, until
from waker.config.hosts import DockerEndpoint, DockerScheme
from waker.docker.connect import ssh_command
from waker.docker.runtime import DockerRuntime
from waker.errors import DockerError


def test_user_and_port_go_to_ssh_and_the_remote_docker_bridges_its_socket():
    assert ssh_command("ssh://admin@spark2:2222") == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-T",
        "-l",
        "admin",
        "-p",
        "2222",
        "--",
        "spark2",
        "docker",
        "system",
        "dial-stdio",
    ]


def test_without_user_or_port_the_ssh_config_decides():
    assert ssh_command("ssh://spark2")[-5:] == ["--", "spark2", "docker", "system", "dial-stdio"]
    assert "-l" not in ssh_command("ssh://spark2") and "-p" not in ssh_command("ssh://spark2")


# The remote end of `ssh HOST docker system dial-stdio`, bridged to the fake engine's port instead of a
# remote socket. It logs its arguments and pid; with no port it fails as ssh does for a refused key.
FAKE_SSH = """#!{python} -IS
import json, os, socket, sys, threading
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid()}}) + "\\n")
if not {port}:
    sys.stderr.write("admin@spark2: Permission denied (publickey).\\n")
    sys.exit(255)
engine = socket.create_connection(("127.0.0.1", {port}))


def upstream():
    while data := os.read(0, 65536):
        engine.sendall(data)
    engine.shutdown(socket.SHUT_WR)


threading.Thread(target=upstream, daemon=True).start()
while data := engine.recv(65536):
    os.write(1, data)
"""


def fake_ssh(tmp_path: Path, monkeypatch, port: int) -> Path:
    """Puts the fake ssh first on PATH; returns the file it logs its runs to."""
    bin_dir, log = tmp_path / "bin", tmp_path / "ssh.log"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH.format(python=sys.executable, log=str(log), port=port))
    ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def runs(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_an_ssh_host_is_spoken_to_through_the_ssh_client_and_its_ssh_ends_with_the_runtime(
    tmp_path, monkeypatch, docker
):
    log = fake_ssh(tmp_path, monkeypatch, int(docker.url.rsplit(":", 1)[1]))
    docker.add("unit-alpha", managed("alpha"), running=True)
    runtime = DockerRuntime(STACK, DockerEndpoint(DockerScheme.SSH, "ssh://admin@spark2:2222"))
    with capture_logs() as logs:
        try:
            assert [info.name for info in await runtime.managed_containers()] == ["unit-alpha"]
        finally:
            await runtime.close()
    assert runs(log) and all(run["argv"] == ssh_command("ssh://admin@spark2:2222")[1:] for run in runs(log))
    for run in runs(log):  # terminated and reaped by close: none left behind
        with pytest.raises(ProcessLookupError):
            os.kill(run["pid"], 0)
    assert [entry for entry in logs if entry["event"] == "docker_ssh_failed"] == []  # a stop is no failure


async def test_an_ssh_that_fails_says_why_in_the_log_and_the_call_is_a_docker_error(tmp_path, monkeypatch):
    fake_ssh(tmp_path, monkeypatch, 0)
    runtime = DockerRuntime(STACK, DockerEndpoint(DockerScheme.SSH, "ssh://admin@spark2:2222"))
    with capture_logs() as logs:
        try:
            with pytest.raises(
                DockerError, match=r"cannot list containers: Cannot connect to Docker Engine via ssh://s"
            ):
                await runtime.managed_containers()
            await until(lambda: any(e["event"] == "docker_ssh_failed" for e in logs), "the failed ssh was logged")
        finally:
            await runtime.close()
    failures = [entry for entry in logs if entry["event"] == "docker_ssh_failed"]
    assert {(f["docker_host"], f["exit_code"], f["ssh_said"]) for f in failures} == {
        ("ssh://admin@spark2:2222", 255, "admin@spark2: Permission denied (publickey).")
    }


async def test_without_an_ssh_client_an_ssh_host_is_a_docker_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    runtime = DockerRuntime(STACK, DockerEndpoint(DockerScheme.SSH, "ssh://spark2"))
    try:
        with pytest.raises(DockerError, match=r"Cannot connect to Docker Engine via ssh://spark2 \[cannot run ssh: "):
            await runtime.managed_containers()
    finally:
        await runtime.close()


async def test_an_empty_docker_host_is_dockers_default_docker_host(tmp_path, monkeypatch, docker):
    monkeypatch.setenv("HOME", str(tmp_path))  # no docker context of this machine's user in the way
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_HOST", docker.url)
    docker.add("unit-alpha", managed("alpha"), running=True)
    runtime = DockerRuntime(STACK)
    try:
        assert [info.model_id for info in await runtime.managed_containers()] == ["alpha"]
    finally:
        await runtime.close()
