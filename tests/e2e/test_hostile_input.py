"""Hostile and broken input, as one table: each row gets a clear JSON error and changes no state (no
container created, nothing asked of the waker). Slow clients are cut off without holding workers."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest

from tests.e2e.stack import Stack, fake_model
from tests.eventually import eventually_async

pytestmark = pytest.mark.e2e

JSON_HEADERS = "Content-Type: application/json\r\n"
# (name, raw request line + headers (without Host), body, expected status, expected code)
CATALOGUE = [
    ("unknown model", "POST /v1/chat/completions", b'{"model": "nope"}', 404, "model_not_found"),
    ("unknown model in the path", "POST /v1/nope/chat/completions", b"{}", 404, "model_not_found"),
    ("model id with a slash", "POST /v1/chat/completions", b'{"model": "alpha/../x"}', 404, "model_not_found"),
    ("model id with spaces", "POST /v1/chat/completions", b'{"model": "al pha"}', 404, "model_not_found"),
    (
        "model id with control characters",
        "POST /v1/chat/completions",
        b'{"model": "al\\u0000pha\\n"}',
        404,
        "model_not_found",
    ),
    (
        "model id of 300 characters",
        "POST /v1/chat/completions",
        b'{"model": "' + b"m" * 300 + b'"}',
        404,
        "model_not_found",
    ),
    ("path escaping with ..", "POST /v1/alpha/../../admin/models", b"{}", 404, "not_found"),
    ("body not JSON", "POST /v1/chat/completions", b"model=alpha", 400, "invalid_json"),
    ("JSON that is not an object", "POST /v1/chat/completions", b'"alpha"', 400, "invalid_body"),
    ("model not a string", "POST /v1/chat/completions", b'{"model": ["alpha"]}', 400, "invalid_model"),
    ("no model", "POST /v1/chat/completions", b'{"messages": []}', 400, "missing_model"),
    ("empty body", "POST /v1/chat/completions", b"", 400, "missing_body"),
    ("invalid UTF-8", "POST /v1/chat/completions", b'{"model": "\xff\xfe"}', 400, "invalid_utf8"),
    ("very deep JSON", "POST /v1/chat/completions", b"[" * 200_000 + b"]" * 200_000, 400, "invalid_json"),
    (
        "body over max_body",
        "POST /v1/chat/completions",
        b'{"model": "alpha", "x": "' + b"a" * 1_200_000 + b'"}',
        413,
        "body_too_large",
    ),
    (
        "huge header",
        "POST /v1/chat/completions\r\nX-Big: " + "x" * 40_000,
        b'{"model": "alpha"}',
        400,
        "headers_too_large",
    ),
    (
        "duplicated Content-Length",
        "POST /v1/chat/completions\r\nContent-Length: 3",
        b'{"model": "alpha"}',
        400,
        "bad_request",
    ),
    ("GET on a body route", "GET /v1/chat/completions", b"", 400, "model_required"),
    ("admin API through the client port without token", "GET /admin/models", b"", 401, "unauthorized"),
    ("the waker's wake endpoint", "GET /_wake/alpha", b"", 404, "not_found"),
    ("vLLM's sleep endpoint", "POST /sleep", b"{}", 404, "not_found"),
    ("unknown HTTP version", "BREW /v1/chat/completions HTTP/9.9", b"", 505, "http_version_not_supported"),
    ("malformed request line", "GET /v1/models HTTP/1.1 extra", b"", 400, "bad_request"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_engine):
    tmp = tmp_path_factory.mktemp("hostile")
    stack = Stack(
        models=[fake_model("alpha")],
        tmp=tmp,
        gateway={"max_body": "1m", "client_timeout": "2s"},
        waker={"admin_token": "hostile-admin-token"},
    ).start()
    yield stack
    stack.stop()


def raw_request(port: int, head: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    if " HTTP/" not in head.split("\r\n")[0]:
        first, _, rest = head.partition("\r\n")
        head = first + " HTTP/1.1" + ("\r\n" + rest if rest else "")
    message = (
        f"{head}\r\nHost: gateway\r\n{JSON_HEADERS}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(message)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


@pytest.mark.parametrize("name, head, body, status, code", CATALOGUE, ids=[row[0] for row in CATALOGUE])
def test_each_bad_input_gets_a_clear_json_error_and_changes_nothing(stack, name, head, body, status, code):
    got, headers, payload = raw_request(stack.gateway_port, head, body)
    assert got == status, payload[:300]
    assert headers["content-type"].startswith("application/json")
    error = json.loads(payload)["error"]
    assert error["code"] == code and error["message"]
    with socket.create_connection(("127.0.0.1", stack.waker_port)) as sock:
        sock.sendall(b"GET /_stats HTTP/1.0\r\n\r\n")
        stats = json.loads(sock.makefile("rb").read().split(b"\r\n\r\n", 1)[1])
    assert stats["wakes"] == 0 and stack.containers() == []


def test_slow_clients_are_cut_off_and_hold_no_worker(stack):
    slow = []
    for _ in range(200):  # more half-sent requests than nginx has workers, by far
        sock = socket.create_connection(("127.0.0.1", stack.gateway_port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        slow.append(sock)
    began = time.monotonic()
    status, _, payload = raw_request(stack.gateway_port, "POST /v1/chat/completions", b'{"model": "nope"}')
    assert status == 404 and time.monotonic() - began < 1  # served at once beside them
    deadline = time.monotonic() + 10
    for sock in slow:  # nginx ends each one after client_timeout (2 s); a recv timeout fails the test
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        data = sock.recv(100)
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        sock.close()
    assert 1.5 < time.monotonic() - began < 10


async def test_one_client_address_cannot_take_every_connection(make_stack):
    """security-probe.md #8: ~16,400 connections from one client locked everyone out. Each address may
    hold max_connections_per_client past its request head: here 8 requests wait on a start (a 60 s
    load) from 127.0.0.1, so the waker has all 8; a ninth from that address gets a JSON 429 at once,
    and another address is served throughout."""
    stack = make_stack(
        [fake_model("slow", load_delay=60)],
        gateway={"max_connections_per_client": 8},
        scheduler={"start_timeout": "120s"},
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def wait_on_the_start() -> None:
            async with session.post(f"{stack.url}/v1/slow/completions", data=b'{"prompt": "x"}') as response:
                await response.read()

        held = [asyncio.create_task(wait_on_the_start()) for _ in range(8)]

        async def all_held() -> bool:
            async with session.get(f"{stack.waker_url}/_stats") as response:
                return (await response.json())["wakes"] == 8

        await eventually_async(all_held, 60, "8 requests held by the waker", stack.log)
        async with session.post(f"{stack.url}/v1/slow/completions", data=b'{"prompt": "x"}') as refused:
            assert refused.status == 429 and refused.headers["Retry-After"] == "1"
            assert (await refused.json())["error"]["code"] == "too_many_connections"
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=other) as elsewhere, elsewhere.get(f"{stack.url}/v1/models") as ok:
            assert ok.status == 200
        assert not any(task.done() for task in held)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
