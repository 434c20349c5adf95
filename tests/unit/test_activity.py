import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from waker.nginx.activity import Mark, MarkKind, ModelActivity, listen, parse


def test_parses_nginx_syslog_marks():
    begin = parse(b"<190>Nov 27 10:51:39 waker: begin /_inflight/qwen2.5:7b 488-1-1")
    assert begin == Mark(MarkKind.BEGIN, "qwen2.5:7b", b"488-1-1")
    assert parse(b"<190>Nov 27 10:51:40 waker: end qwen2.5:7b 488-1-1 200") == Mark(
        MarkKind.END, "qwen2.5:7b", b"488-1-1"
    )


def test_ignores_anything_else():
    for datagram in (
        b"",
        b"garbage",
        b"<190>Nov 27 waker: begin /elsewhere/x 1-1-1",
        b"<190> waker: end x",
        b"<190>Nov 27 other: end x 1-1-1 200",
        b"\xff\xfe waker: nap x 1 2",
    ):
        assert parse(datagram) is None


def test_tracks_requests_in_flight_their_duration_and_the_last_end():
    activity = ModelActivity()
    activity.begin(b"a", 10.0)
    activity.begin(b"b", 11.0)
    assert activity.in_flight == 2 and activity.oldest == 10.0
    activity.end(b"a", 14.0)
    assert activity.in_flight == 1 and activity.oldest == 11.0 and activity.mean_seconds == 4.0
    activity.end(b"b", 13.0)
    assert activity.in_flight == 0 and activity.last_end == 13.0 and activity.total == 2
    assert activity.mean_seconds == 0.8 * 4.0 + 0.2 * 2.0


def test_an_end_without_its_begin_counts_as_activity_only():
    activity = ModelActivity()
    activity.end(b"lost", 5.0)
    assert activity.in_flight == 0 and activity.last_end == 5.0 and activity.mean_seconds is None


@contextlib.asynccontextmanager
async def listening(host: str = "127.0.0.1") -> AsyncIterator[tuple[int, Callable[[int], Awaitable[list[Mark]]]]]:
    """listen() on a free port of `host`; yields the port and arrived(count), which waits for that many marks."""
    marks: list[Mark] = []
    changed = asyncio.Event()

    def on_mark(mark: Mark) -> None:
        marks.append(mark)
        changed.set()

    async def arrived(count: int) -> list[Mark]:
        async def enough() -> None:
            while len(marks) < count:
                changed.clear()
                await changed.wait()

        await asyncio.wait_for(enough(), 10)
        return marks

    sock = await listen(host, 0, on_mark)
    try:
        yield sock.getsockname()[1], arrived
    finally:
        asyncio.get_running_loop().remove_reader(sock)
        sock.close()


def send(port: int, *datagrams: bytes, host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as nginx:
        for datagram in datagrams:
            nginx.sendto(datagram, (host, port))


async def test_nginx_datagrams_arrive_as_marks_and_anything_else_is_dropped():
    async with listening() as (port, arrived):
        send(
            port,
            b"<190>Nov 27 10:51:39 waker: begin /_inflight/alpha 488-1-1",
            b"not syslog at all",
            b"<190>Nov 27 10:51:39 waker: begin /elsewhere/alpha 488-1-2",
            b"<190>Nov 27 10:51:39 waker: nap alpha 488-1-3 200",
            b"<190>Nov 27 10:51:40 waker: end alpha 488-1-1 200",
        )
        # Loopback keeps one sender's datagrams in order: once the last mark is in, the junk before it was read.
        assert await arrived(2) == [Mark(MarkKind.BEGIN, "alpha", b"488-1-1"), Mark(MarkKind.END, "alpha", b"488-1-1")]


async def test_a_burst_of_requests_is_counted_to_the_last_end():
    """A lost "end" would keep a model busy for ever: every one of a burst of short requests must count."""
    activity = ModelActivity()
    requests = 400
    async with listening() as (port, arrived):
        for first in range(0, requests, 50):
            batch = range(first, first + 50)
            send(port, *(f"<190>x waker: begin /_inflight/alpha 9-{i}-1".encode() for i in batch))
            send(port, *(f"<190>x waker: end alpha 9-{i}-1 200".encode() for i in batch))
            await asyncio.sleep(0)  # the sender is this event loop: let it read before the next batch
        for now, mark in enumerate(await arrived(2 * requests)):
            (activity.begin if mark.kind is MarkKind.BEGIN else activity.end)(mark.request, float(now))
    assert activity.total == requests and activity.in_flight == 0


async def test_an_ipv6_listen_address_is_listened_on():
    async with listening("::1") as (port, arrived):
        send(port, b"<190>x waker: end alpha 1-1-1 499", host="::1")
        assert await arrived(1) == [Mark(MarkKind.END, "alpha", b"1-1-1")]
