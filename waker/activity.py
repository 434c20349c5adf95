"""Requests in flight per model, learnt from nginx without being in their path.

nginx sends two syslog datagrams (UDP) per model request to the waker's listen address:
- "begin <id> <request key>" when the request enters a model location (a `mirror` subrequest to an
  internal location whose access log is the message; nothing leaves nginx but the datagram);
- "end <id> <request key> <status>" from the access log, written after the last response byte.
So a 10-minute stream is in flight for 10 minutes, and the waker sees no HTTP request for it.
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass
from typing import Callable

import structlog

log = structlog.get_logger("waker.activity")

BEGIN_PREFIX = "/_inflight/"
# "<190>Nov 27 10:51:39 waker: begin /_inflight/alpha 488-1-1"  /  "... waker: end alpha 488-1-1 200"
_MESSAGE = re.compile(r"waker: (begin|end) (\S+) (\S+)")


@dataclass(frozen=True, slots=True)
class Mark:
    kind: str  # "begin" or "end"
    model: str
    request: str


def parse(datagram: bytes) -> Mark | None:
    """The activity mark in one nginx syslog datagram, or None for anything else."""
    match = _MESSAGE.search(datagram.decode("utf-8", "replace"))
    if match is None:
        return None
    kind, model, request = match.groups()
    if kind == "begin":
        if not model.startswith(BEGIN_PREFIX):
            return None
        model = model[len(BEGIN_PREFIX):]
    return Mark(kind, model, request)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_mark: Callable[[Mark], None]) -> None:
        self.on_mark = on_mark

    def datagram_received(self, data: bytes, addr) -> None:
        mark = parse(data)
        if mark is not None:
            self.on_mark(mark)

    def error_received(self, exc: Exception) -> None:
        log.warning("activity_socket_error", error=str(exc))


async def listen(host: str, port: int, on_mark: Callable[[Mark], None]) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    # A burst of short requests must not overflow the buffer: a lost "end" would keep a model busy.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(on_mark), sock=sock)
    return transport
