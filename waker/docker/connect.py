"""How the waker reaches a Docker engine: its socket, `ssh://` through the OpenSSH client, or `tcp://`
with TLS client certificates (a `[[host]]`'s `docker_host`, waker/config/hosts.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiodocker
import aiohttp
import structlog

from waker.config.hosts import DockerEndpoint, DockerScheme

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

log = structlog.get_logger("waker.docker.connect")

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-T")


def ssh_command(url: str, ssh: str = "ssh") -> list[str]:
    """What the docker CLI runs for an ssh:// host: the remote `docker` bridges one connection to its
    engine's socket on stdin/stdout. BatchMode: a key the agent or ~/.ssh holds, never a prompt."""
    parts = urlsplit(url)
    user = ["-l", parts.username] if parts.username else []
    port = ["-p", str(parts.port)] if parts.port else []
    return [ssh, *SSH_OPTIONS, *user, *port, "--", str(parts.hostname), "docker", "system", "dial-stdio"]


class SshDialConnector(aiohttp.UnixConnector):
    """Every connection to the engine is one `ssh HOST docker system dial-stdio`, whose stdin and stdout
    are one end of a socket pair; aiohttp speaks HTTP on the other. It is the OpenSSH client, so the
    waker's whole SSH set-up applies as it does to `docker -H ssh://...`: keys, agent, known_hosts and
    ~/.ssh/config (ProxyJump, ControlMaster to share one SSH connection among many)."""

    # Requests go to ssh://host/...: the connector dials, and errors name the host the user configured.
    allowed_protocol_schema_set = aiohttp.UnixConnector.allowed_protocol_schema_set | frozenset({"ssh"})

    def __init__(self, url: str, ssh: str = "ssh") -> None:
        super().__init__(path=url)  # the path is never opened: _create_connection dials instead
        self._url = url
        self._command = ssh_command(url, ssh)
        self._reapers: set[asyncio.Task[None]] = set()
        self._processes: set[asyncio.subprocess.Process] = set()

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command, stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            ours.close()
            raise aiohttp.ClientConnectionError(f"cannot run {self._command[0]}: {exc}") from None
        finally:
            theirs.close()
        self._processes.add(process)
        reaper = asyncio.ensure_future(self._reap(process))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        _, protocol = await self._loop.create_unix_connection(self._factory, sock=ours)
        return protocol

    async def _reap(self, process: asyncio.subprocess.Process) -> None:
        """Waits for the ssh of one connection; a failed one says why in the log (the HTTP side only
        sees the connection close): 'Permission denied', 'Host key verification failed', ..."""
        assert process.stderr is not None
        said = (await process.stderr.read()).decode(errors="replace").strip()
        code = await process.wait()
        self._processes.discard(process)
        if code not in (0, -15) and said:
            log.warning("docker_ssh_failed", docker_host=self._url, exit_code=code, ssh_said=said[-500:])

    def close(self, *, abort_ssl: bool = False) -> Awaitable[None]:
        for process in list(self._processes):
            if process.returncode is None:
                process.terminate()
        return self._after_close(super().close(abort_ssl=abort_ssl))

    async def _after_close(self, closing: Awaitable[None]) -> None:
        await closing
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)


def tls_context(endpoint: DockerEndpoint) -> ssl.SSLContext:
    """Docker's --tlsverify client side: the engine's certificate checked against the CA (and its name),
    the waker's own certificate presented."""
    assert endpoint.tls is not None
    context = ssl.create_default_context(cafile=str(endpoint.tls.ca))
    context.load_cert_chain(str(endpoint.tls.cert), str(endpoint.tls.key))
    return context


def docker_client(docker_host: str | DockerEndpoint) -> aiodocker.Docker:
    """An aiodocker client for the engine. A plain string is today's `[waker] docker_host` ("" = the
    default: $DOCKER_HOST, else the local socket), passed to aiodocker as it is."""
    if isinstance(docker_host, str):
        return docker_client(DockerEndpoint(DockerScheme.AS_GIVEN, docker_host))
    if docker_host.scheme == DockerScheme.SSH:
        # Request URLs name the host (never the user: aiohttp would send it as HTTP credentials).
        parts = urlsplit(docker_host.url)
        url = f"ssh://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return aiodocker.Docker(url=url, connector=SshDialConnector(docker_host.url))
    if docker_host.scheme == DockerScheme.TCP:
        return aiodocker.Docker(
            url=docker_host.url.replace("tcp://", "https://", 1), ssl_context=tls_context(docker_host)
        )
    return aiodocker.Docker(url=docker_host.url or None)
