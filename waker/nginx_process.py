"""nginx as a child process of `waker run`: files on disk, config test, start, graceful stop."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import signal
from pathlib import Path

import structlog

from waker.config import Config
from waker.nginx_render import render

log = structlog.get_logger("waker.nginx")

TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxError(Exception):
    pass


def worker_user() -> str | None:
    """When run as root, nginx workers drop to `nobody`; otherwise they keep the current user."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"


def write_files(config: Config) -> Path:
    """Writes nginx.conf and route.js under [waker] runtime_dir; returns the nginx.conf path."""
    root = config.waker.runtime_dir
    user = worker_user()
    for sub in ("logs", "tmp", *(f"tmp/{t}" for t in TEMP_DIRS)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    if user:
        nobody = pwd.getpwnam("nobody")
        for sub in ("tmp", *(f"tmp/{t}" for t in TEMP_DIRS)):
            os.chown(root / sub, nobody.pw_uid, nobody.pw_gid)
    rendered = render(config, root, user)
    conf = root / "nginx.conf"
    (root / "route.js").write_text(rendered.route_js, encoding="utf-8")
    conf.write_text(rendered.nginx_conf, encoding="utf-8")
    return conf


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


class NginxProcess:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        await self._retire_stale()
        conf = write_files(self.config)
        await test_config(self.config, conf)
        self.proc = await asyncio.create_subprocess_exec(*_args(self.config, conf))
        listen = self.config.gateway.listen
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else ("::1" if listen.host == "::" else listen.host)
        for _ in range(200):
            if self.proc.returncode is not None:
                raise NginxError(f"nginx exited with code {self.proc.returncode} at start; see "
                                 f"{self.config.waker.runtime_dir / 'logs' / 'error.log'}")
            try:
                _, writer = await asyncio.open_connection(host, listen.port)
                writer.close()
                log.info("nginx_started", pid=self.proc.pid, listen=str(listen))
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise NginxError(f"nginx did not open {listen} within 10 s")

    async def _retire_stale(self) -> None:
        """An nginx left by a waker that was killed still serves running models; it holds the port, so
        it is asked to finish its requests and quit before ours starts."""
        pid_file = self.config.waker.runtime_dir / "nginx.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"nginx" not in cmdline:
            return
        log.warning("nginx_stale", pid=pid, action="graceful quit")
        os.kill(pid, signal.SIGQUIT)
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists():
                return
            await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT lets requests in progress finish), then SIGKILL after `timeout`."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        log.info("nginx_stopped", code=self.proc.returncode)
