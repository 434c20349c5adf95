"""sd_notify as systemd sees it: datagrams on the unix socket named in $NOTIFY_SOCKET."""

import asyncio
import os
import socket
import uuid

import pytest
import structlog

from waker.system import systemd


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """systemd's end of the protocol: a datagram socket whose path the service finds in its environment."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield sock


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram queued so far: a unix datagram is in the queue once its send returned."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


def test_ready_and_stopping_reach_systemd_verbatim(notify_socket):
    assert systemd.notify("READY=1\nSTATUS=serving 2 models on 127.0.0.1:8009")
    assert systemd.notify("STOPPING=1")
    assert received(notify_socket) == [b"READY=1\nSTATUS=serving 2 models on 127.0.0.1:8009", b"STOPPING=1"]


def test_an_abstract_socket_is_addressed_by_its_at_sign(monkeypatch):
    name = f"waker-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert received(sock) == [b"READY=1"]


def test_outside_systemd_nothing_is_sent_and_nothing_fails(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.notify("READY=1") is False


def test_a_socket_that_is_gone_is_logged_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with structlog.testing.capture_logs() as logs:
        assert systemd.notify("READY=1") is False
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]
    assert "No such file" in logs[0]["error"]


@pytest.mark.parametrize(
    "usec, pid, interval",
    [
        ("4000000", None, 2.0),  # keep-alives at half of WatchdogSec
        ("4000000", "self", 2.0),
        ("4000000", "other", None),  # the watchdog watches another process of the unit
        (None, None, None),
        ("", None, None),
    ],
)
def test_the_watchdog_interval_is_half_of_what_systemd_asks(monkeypatch, usec, pid, interval):
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value))
    assert systemd.watchdog_interval() == interval


async def test_keep_alives_are_sent_only_while_healthy(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000")  # a keep-alive every millisecond
    answers = [True, False, False, True]
    asked = asyncio.Event()

    def healthy() -> bool:
        if answers:
            return answers.pop(0)
        asked.set()  # every scripted answer has been acted on: the keep-alives for them were sent
        return False

    with structlog.testing.capture_logs() as logs:
        feeding = asyncio.create_task(systemd.feed_watchdog(healthy))
        await asyncio.wait_for(asked.wait(), 10)
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
    assert received(notify_socket) == [b"WATCHDOG=1", b"WATCHDOG=1"]
    assert [entry["reason"] for entry in logs if entry["event"] == "watchdog_withheld"][:2] == ["unhealthy"] * 2


async def test_without_a_watchdog_nothing_is_fed(notify_socket):
    def healthy() -> bool:
        raise AssertionError("health is not asked for without a watchdog")

    await asyncio.wait_for(systemd.feed_watchdog(healthy), 5)
    assert received(notify_socket) == []
