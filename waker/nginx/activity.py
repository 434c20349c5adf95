"""Requests in flight per model, learnt from nginx without being in their path.

nginx sends two syslog datagrams (UDP) per model request to the waker's listen address:
- "begin <id> <request key>" when the request enters a model location (a `mirror` subrequest to an
  internal location whose access log is the message; nothing leaves nginx but the datagram);
- "end <id> <request key> <status>" from the access log, written after the last response byte.
So a 10-minute stream is in flight for 10 minutes, and the waker sees no HTTP request for it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

import structlog

from waker.nginx.render import BEGIN_PREFIX

log = structlog.get_logger("waker.nginx.activity")


class MarkKind(StrEnum):
    BEGIN = "begin"  # nginx passed a request to the model (its mirror subrequest)
    END = "end"  # its last byte was sent, or its client left (its access log line)


class Mark(NamedTuple):  # a tuple: it is made twice per model request
    kind: MarkKind
    model: str
    request: bytes


def parse(datagram: bytes) -> Mark | None:
    """The activity mark in one nginx syslog datagram, or None for anything else.

    "<190>Nov 27 10:51:39 waker: begin /_inflight/alpha 488-1-1"  /  "... waker: end alpha 488-1-1 200"
    """
    at = datagram.find(b"waker: ")
    if at < 0:
        return None
    parts = datagram[at + 7 :].split(b" ")
    if len(parts) < 3:
        return None
    kind, model, request = parts[0], parts[1].decode("utf-8", "replace"), parts[2]
    if kind == b"begin" and model.startswith(BEGIN_PREFIX):
        return Mark(MarkKind.BEGIN, model[len(BEGIN_PREFIX) :], request)
    if kind == b"end":
        return Mark(MarkKind.END, model, request)
    return None


class ModelActivity:
    """One model's requests in flight and its recent history, as the marks tell it."""

    MEAN_WEIGHT = 0.2  # weight of the newest request in the running mean of request durations

    __slots__ = ("requests", "last_end", "mean_seconds", "total")

    def __init__(self) -> None:
        self.requests: dict[bytes, float] = {}
        self.last_end = 0.0
        self.mean_seconds: float | None = None
        self.total = 0

    def begin(self, request: bytes, now: float) -> None:
        self.requests[request] = now

    def end(self, request: bytes, now: float) -> None:
        """A request ended; one whose begin was never seen (the waker restarted) only counts as activity."""
        began = self.requests.pop(request, None)
        self.total += 1
        self.last_end = now
        if began is not None:
            duration = now - began
            self.mean_seconds = (
                duration
                if self.mean_seconds is None
                else ((1 - self.MEAN_WEIGHT) * self.mean_seconds + self.MEAN_WEIGHT * duration)
            )

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    @property
    def oldest(self) -> float | None:
        return min(self.requests.values()) if self.requests else None


async def listen(host: str, port: int, on_mark: Callable[[Mark], None]) -> socket.socket:
    """Receives marks on UDP host:port. Datagrams are drained in batches: at thousands of requests
    per second, one event-loop wake-up per datagram would cost the waker real CPU."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    # A burst of short requests must not overflow the buffer: a lost "end" would keep a model busy.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setblocking(False)
    sock.bind((host, port))

    def drain() -> None:
        for _ in range(1024):
            try:
                data = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("activity_socket_error", error=str(exc))
                return
            mark = parse(data)
            if mark is not None:
                on_mark(mark)

    loop.add_reader(sock, drain)
    return sock
