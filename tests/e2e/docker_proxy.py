"""A pass-through proxy for the Docker socket that records every API call, to count what the waker
asks of Docker. It runs its own event loop in a thread, so it keeps serving while a test blocks."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from pathlib import Path

REQUEST_LINE = re.compile(rb"^(GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


async def relay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, observe: Callable[[bytes], None] | None = None
) -> None:
    """Copies bytes from reader to writer until either side ends; `observe` sees each chunk."""
    try:
        while data := await reader.read(65536):
            if observe is not None:
                observe(data)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class DockerCallCounter:
    def __init__(self, socket_path: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.socket_path = socket_path
        self.upstream = upstream
        self.log: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def calls(self) -> list[str]:
        return list(self.log)

    def start(self) -> DockerCallCounter:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_unix_server(self._serve, path=str(self.socket_path)))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, client_reader, client_writer) -> None:
        docker_reader, docker_writer = await asyncio.open_unix_connection(self.upstream)
        await asyncio.gather(
            relay(client_reader, docker_writer, self._count),
            relay(docker_reader, client_writer),
            return_exceptions=True,
        )

    def _count(self, data: bytes) -> None:
        if match := REQUEST_LINE.match(data):
            self.log.append(f"{match.group(1).decode()} {match.group(2).decode()}")
