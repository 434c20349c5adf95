"""nginx as a child of `waker run` (waker/nginx/process.py), played by tests/unit/fake_nginx.py: a script
that behaves towards its parent as nginx does (config test, pid file, listening socket, worker titles in
/proc, SIGHUP and SIGQUIT). The real nginx runs in tests/integration and tests/e2e."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

import waker
from tests.eventually import eventually_async
from tests.unit import fake_nginx
from waker.config.schema import Config, parse_config
from waker.errors import NginxError
from waker.nginx import process
from waker.nginx.process import NginxProcess, NginxRouter, current_generation, wait_generation, worker_user, write_files
from waker.nginx.render import render

REPOSITORY = Path(waker.__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Gateway:
    """The fake nginx in tmp_path/bin, the configs that name it, and what it logged."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.nginx = self.bin / "nginx"
        self.nginx.write_text(f"#!{sys.executable} -S\n" + Path(fake_nginx.__file__).read_text())
        self.nginx.chmod(0o755)
        self.port = free_port()
        self.root = tmp_path / "run"

    def raw(self, *models: str) -> dict[str, Any]:
        return {
            "waker": {"runtime_dir": str(self.root)},
            "gateway": {"listen": f"127.0.0.1:{self.port}", "nginx": str(self.nginx)},
            "model": [{"id": model, "image": "i", "host_port": 19001 + n} for n, model in enumerate(models)],
        }

    def config(self, *models: str) -> Config:
        return parse_config(self.raw(*models), self.tmp_path / "models.toml")

    def generation(self, config: Config, asleep: frozenset[str] = frozenset()) -> str:
        """The generation nginx answers once it runs what `config` renders to."""
        return render(config, self.root, worker_user(), files_dir=self.root, asleep=asleep).generation

    def misbehave(self, how: str, text: str = "") -> None:
        (self.bin / how).write_text(text)

    def events(self, *kinds: str) -> list[dict[str, Any]]:
        log = self.bin / "log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [event for event in map(json.loads, lines) if not kinds or event["event"] in kinds]

    async def workers(self, generation: str) -> list[int]:
        """The pids of the workers serving `generation`, once all of them are up."""

        async def up() -> list[int]:
            pids = [event["pid"] for event in self.events("worker") if event["generation"] == generation]
            return pids if len(pids) == fake_nginx.WORKERS else []

        return await eventually_async(up, 10, f"the workers of generation {generation}")

    async def logged(self, kind: str) -> list[dict[str, Any]]:
        async def found() -> list[dict[str, Any]]:
            return self.events(kind)

        return await eventually_async(found, 30, f"a {kind} in the fake nginx's log")

    def argv(self, conf: Path) -> list[str]:
        return ["-p", str(self.root), "-c", str(conf), "-e", str(self.root / "logs" / "error.log")]

    def kill_all(self) -> None:
        """What a failed test left running; a pid is only killed while it still has an nginx title."""
        for event in self.events("start", "worker"):
            if title(event["pid"]).startswith("nginx: "):
                os.kill(event["pid"], signal.SIGKILL)


@pytest.fixture
def gateway(tmp_path):
    gateway = Gateway(tmp_path)
    yield gateway
    gateway.kill_all()


async def started(gateway: Gateway, *models: str) -> NginxProcess:
    """An nginx fully up: start() returns once it listens, and like nginx, the fake writes its pid file and
    starts its workers after that."""
    nginx = NginxProcess(gateway.config(*models))
    await nginx.start()
    await gateway.workers(gateway.generation(nginx.config))
    return nginx


async def test_nginx_runs_from_a_tested_config_until_a_graceful_stop(gateway):
    nginx = await started(gateway, "alpha")
    conf = gateway.root / "nginx.conf"
    assert [(e["event"], e["argv"]) for e in gateway.events("test", "start")] == [
        ("test", [*gateway.argv(conf), "-t"]),
        ("start", gateway.argv(conf)),
    ]
    assert nginx.pid == nginx.proc.pid == int((gateway.root / "nginx.pid").read_text())
    assert nginx.alive() and "nginx: master process" in title(nginx.pid)
    assert await current_generation(gateway.config("alpha")) == gateway.generation(gateway.config("alpha"))
    for made in ("route.js", "logs", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        assert (gateway.root / made).exists(), made
    assert (gateway.root.stat().st_mode & 0o777) == 0o755  # nginx's workers may run as nobody

    workers = await gateway.workers(gateway.generation(gateway.config("alpha")))
    await nginx.stop()
    assert nginx.proc.returncode == 0 and not nginx.alive()
    assert [e["event"] for e in gateway.events("exit", "quit")] == ["exit", "exit", "quit"]  # workers first
    assert {e["pid"] for e in gateway.events("exit")} == set(workers)
    assert not (gateway.root / "nginx.pid").exists()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", gateway.port)
    await nginx.stop()  # stopping a stopped nginx is nothing


async def test_an_nginx_that_ignores_the_graceful_stop_is_killed(gateway):
    nginx = await started(gateway, "alpha")
    gateway.misbehave("stuck")
    await nginx.stop(timeout=0.3)
    assert nginx.proc.returncode == -signal.SIGKILL and not nginx.alive()
    assert gateway.events("quit") == []


async def test_an_nginx_that_dies_is_seen_dead(gateway):
    nginx = await started(gateway, "alpha")
    os.kill(nginx.pid, signal.SIGKILL)
    assert await asyncio.wait_for(nginx.wait(), 10) == -signal.SIGKILL
    assert not nginx.alive()
    await nginx.stop()  # nothing left to stop: no error


async def test_a_config_nginx_refuses_fails_the_start_with_nginxs_words(gateway):
    gateway.misbehave("refuse", 'unknown directive "bogus" in /etc/x.conf:3')
    with pytest.raises(NginxError) as caught:
        await started(gateway, "alpha")
    conf = gateway.root / "nginx.conf"
    assert str(caught.value) == (
        f"nginx refused the rendered config {conf}:\n"
        f'nginx: [emerg] unknown directive "bogus" in /etc/x.conf:3\n'
        f"nginx: configuration file {conf} test failed"
    )
    assert gateway.events("start") == []


async def test_without_nginx_the_error_says_how_to_get_it(gateway, tmp_path):
    config = parse_config(
        {**gateway.raw("alpha"), "gateway": {"nginx": str(tmp_path / "nowhere" / "nginx")}}, tmp_path / "m.toml"
    )
    with pytest.raises(NginxError, match=r"not found; install nginx \(apt-get install nginx libnginx-mod-http-js\)"):
        await NginxProcess(config).start()


async def test_an_nginx_that_exits_at_start_points_at_its_error_log(gateway):
    with socket.socket() as taken:  # bound, not listening: nginx cannot bind, and nothing answers
        taken.bind(("127.0.0.1", gateway.port))
        with pytest.raises(NginxError) as caught:
            await started(gateway, "alpha")
    error_log = gateway.root / "logs" / "error.log"
    assert str(caught.value) == f"nginx exited with code 1 at start; see {error_log}"
    assert f"bind() to 127.0.0.1:{gateway.port} failed (98: Address already in use)" in error_log.read_text()


async def test_a_reload_signals_nginx_only_for_a_changed_config_it_accepts(gateway):
    nginx = await started(gateway, "alpha", "beta")
    config = nginx.config
    old = await gateway.workers(gateway.generation(config))
    # A reload closes idle keep-alive connections, which races with clients reusing them.
    await nginx.reload(config)
    assert len(gateway.events("test")) == 2 and gateway.events("reload") == []

    gateway.misbehave("refuse", "invalid number of arguments")
    with pytest.raises(NginxError, match="invalid number of arguments"):
        await nginx.reload(config, asleep=frozenset({"beta"}))
    assert gateway.events("reload") == []
    assert await current_generation(config) == gateway.generation(config)

    (gateway.bin / "refuse").unlink()
    await NginxRouter(nginx).route(config, frozenset({"alpha"}))  # sleep mode closing alpha's gate
    gated = gateway.generation(config, frozenset({"alpha"}))
    assert await current_generation(config) == gated
    assert [e["generation"] for e in gateway.events("reload")] == [gated]
    assert not [pid for pid in old if "worker process" in title(pid) and "shutting down" not in title(pid)]
    assert nginx.pid == int((gateway.root / "nginx.pid").read_text())  # the same master, reloaded


async def test_a_reload_returns_only_once_every_old_worker_stopped_taking_connections(gateway, monkeypatch):
    """Until then a new connection can still land on an old worker and get the old config."""
    nginx = await started(gateway, "alpha")
    old = await gateway.workers(gateway.generation(gateway.config("alpha")))
    gateway.misbehave("hold")
    seen: dict[int, bool] = {}
    saw_one_accepting = asyncio.Event()

    real = process._accepting

    def accepting(pid: int) -> bool:
        seen[pid] = real(pid)
        if seen[pid]:
            saw_one_accepting.set()
        return seen[pid]

    monkeypatch.setattr(process, "_accepting", accepting)
    changed = gateway.config("alpha", "beta")
    reloading = asyncio.create_task(nginx.reload(changed))
    await asyncio.wait_for(saw_one_accepting.wait(), 10)
    assert not reloading.done()
    assert await current_generation(changed) == gateway.generation(changed)  # the new config answers already
    for pid in old:
        os.kill(pid, signal.SIGUSR2)
    await asyncio.wait_for(reloading, 10)
    assert {pid: seen[pid] for pid in old} == dict.fromkeys(old, False)


async def test_old_workers_that_never_stop_accepting_fail_the_reload_at_its_deadline(gateway, monkeypatch):
    nginx = await started(gateway, "alpha")
    gateway.misbehave("hold")
    monkeypatch.setattr(NginxProcess._reload, "__defaults__", (0.3,))  # the deadline, 10 s in the waker
    # The old workers' deadline runs from the moment the new config answers; how long that takes is not
    # under test, and on a loaded machine it may take longer than 0.3 s.
    answers = process.wait_generation
    monkeypatch.setattr(process, "wait_generation", lambda config, generation, _: answers(config, generation, 10))
    with pytest.raises(NginxError, match="^nginx's old workers still took connections 0.3 s after the reload$"):
        await nginx.reload(gateway.config("alpha", "beta"))


async def test_a_reload_does_not_wait_for_old_workers_to_finish_their_requests(gateway):
    """An old worker "shutting down" takes no new connection: its long stream may take minutes."""
    nginx = await started(gateway, "alpha")
    old = await gateway.workers(gateway.generation(gateway.config("alpha")))
    gateway.misbehave("linger")
    await asyncio.wait_for(nginx.reload(gateway.config("alpha", "beta")), 10)
    assert all("worker process is shutting down" in title(pid) for pid in old)
    for pid in old:
        os.kill(pid, signal.SIGUSR2)


async def test_a_live_nginx_of_an_earlier_run_is_adopted_and_reloaded_only_if_its_config_changed(gateway):
    """`waker run` killed without clean-up leaves nginx serving: requests to running models go on."""
    first = await started(gateway, "alpha")
    again = await started(gateway, "alpha")
    assert again.pid == first.pid and again.proc is None and again.alive()
    assert len(gateway.events("start")) == 1 and gateway.events("reload") == []
    changed = await started(gateway, "alpha", "beta")
    assert changed.pid == first.pid and len(gateway.events("reload")) == 1
    assert await current_generation(changed.config) == gateway.generation(changed.config)
    await changed.stop()
    assert await asyncio.wait_for(changed.wait(), 10) is None  # not our child: no exit code
    assert await asyncio.wait_for(first.proc.wait(), 10) == 0


async def test_a_pid_file_naming_a_process_that_is_not_nginx_is_not_adopted(gateway):
    """nginx was killed, and its pid went to another process since."""
    unrelated = await asyncio.create_subprocess_exec(sys.executable, "-c", "input()", stdin=asyncio.subprocess.PIPE)
    try:
        gateway.root.mkdir()
        (gateway.root / "nginx.pid").write_text(f"{unrelated.pid}\n")
        nginx = await started(gateway, "alpha")
        assert nginx.proc is not None and nginx.pid == nginx.proc.pid and len(gateway.events("start")) == 1
    finally:
        unrelated.kill()
        await unrelated.wait()


async def test_a_check_tests_the_new_config_beside_the_running_one(gateway):
    nginx = await started(gateway, "alpha")
    running = (gateway.root / "nginx.conf").read_bytes()
    await nginx.check(gateway.config("alpha", "beta"))
    staging = gateway.root / "staging" / "nginx.conf"
    assert gateway.events("test")[-1]["argv"] == [*gateway.argv(staging), "-t"]
    assert "beta" in staging.read_text() and (gateway.root / "nginx.conf").read_bytes() == running
    assert gateway.events("reload") == []
    gateway.misbehave("refuse", "host not found")
    with pytest.raises(NginxError, match=f"^nginx refused the rendered config {staging}:\nnginx: \\[emerg\\] host"):
        await nginx.check(gateway.config("alpha", "beta"))


async def test_no_generation_is_read_from_a_gateway_that_refuses_or_is_not_there(gateway):
    config = gateway.config("alpha")
    with socket.socket() as bound:  # bound, not listening: nothing there
        bound.bind(("127.0.0.1", gateway.port))
        assert await current_generation(config) is None

    async def deny(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden")
        writer.close()

    server = await asyncio.start_server(deny, "127.0.0.1", gateway.port)
    async with server:
        assert await current_generation(config) is None
        with pytest.raises(NginxError, match="^nginx did not take the new config within 0.2 s; see its error log$"):
            await wait_generation(config, gateway.generation(config), timeout=0.2)


@pytest.mark.parametrize("root", [True, False])
def test_as_root_the_workers_run_as_nobody_and_own_the_temp_dirs(gateway, monkeypatch, root):
    nobody = pwd.getpwnam("nobody")
    owners: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: owners.append((Path(path), uid, gid)))
    write_files(gateway.config("alpha"))
    user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
    conf = (gateway.root / "nginx.conf").read_text()
    if root:
        temp = ["tmp", *(f"tmp/{name}" for name in process.TEMP_DIRS)]
        assert owners == [(gateway.root / sub, nobody.pw_uid, nobody.pw_gid) for sub in temp]
        assert user in conf
    else:
        assert owners == [] and "user nobody" not in conf


async def test_waker_gateway_becomes_nginx_in_the_foreground(gateway):
    """The compose gateway's main process: `waker gateway` writes the files, then execs nginx in its place,
    so that the container's signals (SIGHUP from the waker beside it, SIGQUIT at stop) reach nginx."""
    path = gateway.tmp_path / "models.toml"
    path.write_text(tomli_w.dumps(gateway.raw("alpha")))
    shell = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waker.cli.main",
        "gateway",
        "--config",
        str(path),
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        [start] = await gateway.logged("start")
        assert start["pid"] == shell.pid and start["argv"] == gateway.argv(gateway.root / "nginx.conf")
        config = gateway.config("alpha")
        await wait_generation(config, gateway.generation(config))
        os.kill(shell.pid, signal.SIGQUIT)
        assert await asyncio.wait_for(shell.wait(), 10) == 0
    finally:
        if shell.returncode is None:
            shell.kill()
            await shell.wait()
