"""systemd's notify protocol (sd_notify) without libsystemd: READY when the gateway answers,
WATCHDOG keep-alives while the event loop and nginx are healthy, STOPPING on the way out.
Outside systemd (no $NOTIFY_SOCKET) every call is a no-op."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger("waker.system.systemd")


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False


def watchdog_interval() -> float | None:
    """Seconds between keep-alives (half of WatchdogSec), or None when no watchdog is asked for."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


async def feed_watchdog(healthy: Callable[[], bool]) -> None:
    """Sends WATCHDOG=1 while `healthy()` holds: a stuck loop or a dead nginx gets us restarted."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        else:
            log.error("watchdog_withheld", reason="unhealthy")
        await asyncio.sleep(interval)
