"""nginx as a child process of `waker run`: files on disk, config test, start, graceful stop.

Also what every way of running nginx shares: the rendered files, `nginx -t`, the generation probe
(nginx_container runs the same steps against an nginx in another container)."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import signal
from pathlib import Path
from typing import NoReturn, Protocol

import structlog

from waker.config.schema import Config
from waker.errors import NginxError
from waker.nginx.render import GENERATION_PATH, Rendered, render

log = structlog.get_logger("waker.nginx")

TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


def worker_user() -> str | None:
    """When run as root, nginx workers drop to `nobody`; otherwise they keep the current user."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"


def write_files(config: Config, files_dir: Path | None = None, asleep: frozenset[str] = frozenset()) -> Rendered:
    """Writes nginx.conf and route.js (in `files_dir`, default [waker] runtime_dir) and the
    directories nginx needs; `asleep`: models in sleep mode, whose requests nginx sends to the waker."""
    root = config.waker.runtime_dir
    user = worker_user()
    for sub in ("logs", "tmp", *(f"tmp/{t}" for t in TEMP_DIRS)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    if user:
        nobody = pwd.getpwnam("nobody")
        for sub in ("tmp", *(f"tmp/{t}" for t in TEMP_DIRS)):
            os.chown(root / sub, nobody.pw_uid, nobody.pw_gid)
    target = files_dir or root
    target.mkdir(parents=True, exist_ok=True)
    rendered = render(config, root, user, files_dir=target, asleep=asleep)
    (target / "route.js").write_text(rendered.route_js, encoding="utf-8")
    (target / "nginx.conf").write_text(rendered.nginx_conf, encoding="utf-8")
    return rendered


def _files(root: Path) -> tuple[bytes, ...]:
    """The rendered files' contents, to tell whether a config change reaches nginx at all."""
    return tuple((root / name).read_bytes() if (root / name).exists() else b"" for name in ("nginx.conf", "route.js"))


def _binary(name: str) -> str:
    """nginx lives in /usr/sbin on Debian, which is not on a normal user's PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin") or name


def _args(config: Config, conf: Path) -> list[str]:
    root = config.waker.runtime_dir
    return [_binary(config.gateway.nginx), "-p", str(root), "-c", str(conf), "-e", str(root / "logs" / "error.log")]


async def test_config(config: Config, conf: Path) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *_args(config, conf), "-t", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError:
        raise NginxError(
            f"nginx binary {config.gateway.nginx!r} not found; install nginx (apt-get install nginx "
            "libnginx-mod-http-js) or set [gateway] nginx"
        ) from None
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise NginxError(f"nginx refused the rendered config {conf}:\n{output.decode(errors='replace').strip()}")


async def write_and_test(config: Config, asleep: frozenset[str] = frozenset()) -> Rendered:
    """Writes the files `config` renders to (the gates of `asleep` closed) into the runtime dir, then
    has nginx test them."""
    rendered = write_files(config, asleep=asleep)
    await test_config(config, config.waker.runtime_dir / "nginx.conf")
    return rendered


async def check_config(config: Config) -> None:
    """Has nginx test the config that `config` renders to, leaving the running one in place."""
    staging = config.waker.runtime_dir / "staging"
    write_files(config, staging)
    await test_config(config, staging / "nginx.conf")


def exec_nginx(config: Config) -> NoReturn:
    """Writes the files, then becomes nginx in the foreground (nginx.conf says `daemon off;`): the
    compose gateway's main process, which a waker in another container reloads with SIGHUP."""
    write_files(config)
    args = _args(config, config.waker.runtime_dir / "nginx.conf")
    log.info("nginx_exec", args=args)
    os.execv(args[0], args)


async def current_generation(config: Config) -> str | None:
    """The generation of the config nginx runs (GENERATION_PATH), or None when nothing answers."""
    gateway = config.gateway.listen.reachable()
    try:
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        try:
            writer.write(f"GET {GENERATION_PATH} HTTP/1.0\r\nHost: waker\r\n\r\n".encode())
            answer = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
    except (TimeoutError, OSError):
        return None
    head, _, body = answer.partition(b"\r\n\r\n")
    return body.decode(errors="replace") if b" 200 " in head.split(b"\r\n", 1)[0] else None


async def wait_generation(config: Config, generation: str, timeout: float = 10.0) -> None:
    """Returns once nginx answers with `generation`: a reload has taken effect."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await current_generation(config) == generation:
            return
        await asyncio.sleep(0.02)
    raise NginxError(f"nginx did not take the new config within {timeout:g} s; see its error log")


class Nginx(Protocol):
    """The gateway's nginx as the waker drives it, wherever it runs."""

    async def start(self) -> None: ...
    def alive(self) -> bool: ...
    async def check(self, config: Config) -> None: ...
    async def reload(self, config: Config, asleep: frozenset[str] = frozenset()) -> None:
        """Switches nginx to `config`, with the models in `asleep` gated (their requests go to the
        waker), and returns once the new config answers."""

    async def wait(self) -> int | None: ...
    async def stop(self) -> None: ...


class NginxProcess:
    """The gateway's nginx. If a live nginx from an earlier `waker run` (killed without clean-up)
    still serves this runtime dir, it is adopted and reloaded instead of replaced, so requests to
    running models never see the port closed."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None

    async def start(self) -> None:
        stale = self._live_pid()
        before = _files(self.config.waker.runtime_dir)
        rendered = await write_and_test(self.config)
        if stale is not None:
            self.pid = stale
            changed = _files(self.config.waker.runtime_dir) != before
            # A reload closes idle keep-alive connections, which races with clients reusing them:
            # only when the config really changed is that worth it.
            if changed:
                await self._reload(rendered.generation)
            log.info("nginx_adopted", pid=stale, listen=str(self.config.gateway.listen), reloaded=changed)
            return
        conf = self.config.waker.runtime_dir / "nginx.conf"
        self.proc = await asyncio.create_subprocess_exec(*_args(self.config, conf))
        self.pid = self.proc.pid
        await self._wait_listening()
        log.info("nginx_started", pid=self.pid, listen=str(self.config.gateway.listen))

    def _live_pid(self) -> int | None:
        try:
            pid = int((self.config.waker.runtime_dir / "nginx.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"nginx" in cmdline and b"master" in cmdline else None

    async def _wait_listening(self) -> None:
        gateway = self.config.gateway.listen.reachable()
        for _ in range(200):
            if self.proc is not None and self.proc.returncode is not None:
                raise NginxError(
                    f"nginx exited with code {self.proc.returncode} at start; see "
                    f"{self.config.waker.runtime_dir / 'logs' / 'error.log'}"
                )
            try:
                _, writer = await asyncio.open_connection(gateway.host, gateway.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise NginxError(f"nginx did not open {self.config.gateway.listen} within 10 s")

    def alive(self) -> bool:
        return (
            self.pid is not None
            and Path(f"/proc/{self.pid}").exists()
            and (self.proc is None or self.proc.returncode is None)
        )

    async def check(self, config: Config) -> None:
        await check_config(config)

    async def reload(self, config: Config, asleep: frozenset[str] = frozenset()) -> None:
        """Switches nginx to `config` gracefully (new workers take new connections, old ones finish
        their requests) and returns once the new config answers; `asleep`: the models whose gate is
        closed."""
        self.config = config
        before = _files(config.waker.runtime_dir)
        rendered = await write_and_test(config, asleep)
        assert self.pid is not None
        if _files(config.waker.runtime_dir) != before:
            await self._reload(rendered.generation)
            log.info("nginx_reloaded", pid=self.pid, generation=rendered.generation)

    async def _reload(self, generation: str, timeout: float = 10.0) -> None:
        """SIGHUP, then wait until the new config answers and every old worker has stopped taking
        connections: until then a new connection can still land on an old worker and get the old
        config (a model a reload had just added answered 404 once, on a loaded machine)."""
        assert self.pid is not None
        old = _workers(self.pid)
        os.kill(self.pid, signal.SIGHUP)
        await wait_generation(self.config, generation, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(_accepting(worker) for worker in old):
            if loop.time() >= deadline:
                raise NginxError(f"nginx's old workers still took connections {timeout:g} s after the reload")
            await asyncio.sleep(0.01)

    async def wait(self) -> int | None:
        """Returns when nginx exits: its exit code, or None for an adopted one (not our child)."""
        if self.proc is not None:
            return await self.proc.wait()
        assert self.pid is not None
        await _exited(self.pid)
        return None

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT lets requests in progress finish), then SIGKILL after `timeout`."""
        if self.pid is None or not Path(f"/proc/{self.pid}").exists():
            return
        if self.proc is not None and self.proc.returncode is not None:
            return
        os.kill(self.pid, signal.SIGQUIT)
        try:
            await asyncio.wait_for(self.wait(), timeout)
        except TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            await self.wait()
        log.info("nginx_stopped", pid=self.pid)


def _workers(master: int) -> list[int]:
    """The pids of the master's children (its workers), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(master):
            children.append(int(stat.parent.name))
    return children


def _accepting(pid: int) -> bool:
    """Whether an nginx worker still takes new connections: an old one renames itself "worker process
    is shutting down" as it closes its listening sockets."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"worker process" in title and b"shutting down" not in title


async def _exited(pid: int) -> None:
    """Waits for a process that is not our child to exit, without polling (a pidfd turns readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class NginxRouter:
    """Sleep mode's gate (`core.driver.Router`) over the gateway's nginx: a graceful reload."""

    def __init__(self, nginx: Nginx) -> None:
        self.nginx = nginx

    async def route(self, config: Config, asleep: frozenset[str]) -> None:
        await self.nginx.reload(config, asleep)
