"""vLLM's development endpoints stay out of clients' reach. A model with `sleep` runs vLLM with
VLLM_SERVER_DEV_MODE=1, which serves /sleep, /wake_up, /collective_rpc (any worker method) and the
rest of the list below: anyone who reached them could put a model to sleep, wedge it or run worker
code. Through the client port, body- and path-routed and with path tricks, none may arrive; the real
engine's own request counters (vLLM's /metrics, per route) are the evidence."""

from __future__ import annotations

import json
import re
import socket
import urllib.request

import pytest

from tests.e2e.stack import REAL_SCHEDULER, real_model
from tests.eventually import eventually

pytestmark = pytest.mark.e2e
READY_TIMEOUT = 300  # a cold start of the real engine on a loaded machine, with margin

# Every route vLLM 0.32.0 adds with VLLM_SERVER_DEV_MODE=1 (vllm/entrypoints/serve/dev/*/api_router.py
# and vllm/entrypoints/rl/online/api_router.py, registered by launchers/api_server/routers.py).
DEV_ROUTES = {
    "/sleep": "POST",
    "/wake_up": "POST",
    "/is_sleeping": "GET",
    "/release_kv_cache_memory": "POST",
    "/collective_rpc": "POST",
    "/reset_prefix_cache": "POST",
    "/reset_mm_cache": "POST",
    "/reset_encoder_cache": "POST",
    "/server_info": "GET",
    "/pause": "POST",
    "/resume": "POST",
    "/abort_requests": "POST",
    "/is_paused": "GET",
    "/init_weight_transfer_engine": "POST",
    "/shutdown_weight_transfer_engine": "POST",
    "/start_weight_update": "POST",
    "/start_draft_weight_update": "POST",
    "/update_weights": "POST",
    "/finish_weight_update": "POST",
    "/update_weight_version": "POST",
    "/weight_info": "GET",
    "/weight_checker": "POST",
    "/get_world_size": "GET",
}


def disguises(route: str) -> list[str]:
    """Request targets that mean `route` to a lax path normaliser: dot segments (plain, encoded, with
    encoded slashes), doubled slashes, encoded letters, case, trailing slash, absolute form, and
    every way into body routing (/v1/..., /tokenize) and path routing (/v1/<model>/...)."""
    bare = route[1:]
    return [
        route,
        f"{route}?level=1",
        f"{route}/",
        route.upper(),
        f"/%{ord(bare[0]):02x}{bare[1:]}",
        f"//{bare}",
        f"/./{bare}",
        f"http://127.0.0.1{route}",
        f"/v1/..{route}",
        f"/v1/%2e%2e{route}",
        f"/v1/%2E%2E%2F{bare}",
        f"/v1/chat/completions/../..{route}",
        f"/tokenize/..{route}",
        f"/v1//tiny/../..{route}",
        f"/v1/tiny{route}",
        f"/v1/tiny/..{route}",
        f"/v1/tiny/../..{route}",
        f"/v1/tiny/%2e%2e/%2e%2e{route}",
        f"/v1/tiny/..%2f..{route}",
        f"/v1/tiny/%2e%2e%2f%2e%2e%2f{bare}",
        f"/v1/tiny//..//..{route}",
        f"/v1/tiny-alias/../..{route}",
    ]


def raw_request(port: int, method: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request sent byte for byte (HTTP clients normalise paths before sending)."""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    header_block, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        payload = dechunk(payload)
    return int(status_line.split()[1]), headers, payload


def dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]


def dev_route_hits(engine_url: str) -> dict[str, float]:
    """vLLM's own count of requests per dev route (prometheus-fastapi-instrumentator's series)."""
    with urllib.request.urlopen(f"{engine_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    hits: dict[str, float] = {}
    for handler, value in re.findall(r'^http_requests_total\{[^}]*handler="([^"]+)"[^}]*\} (\S+)$', text, re.MULTILINE):
        if handler in DEV_ROUTES:
            hits[handler] = hits.get(handler, 0) + float(value)
    return hits


def test_no_dev_endpoint_is_reachable_from_the_client_port(make_stack):
    stack = make_stack(
        [real_model("tiny", aliases=["tiny-alias"], sleep=1, idle_timeout="1h")], scheduler=REAL_SCHEDULER
    )
    body = json.dumps({"model": "tiny", "method": "reload_weights", "level": 1}).encode()
    # A cold start first, so that every attempt below has an engine to reach.
    warm_up = urllib.request.Request(
        f"{stack.url}/v1/completions",
        method="POST",
        data=json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 1}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(warm_up, timeout=READY_TIMEOUT) as response:
        assert response.status == 200
    engine = stack.model_url("tiny")
    assert dev_route_hits(engine) == {}

    answers = {}
    for route, method in DEV_ROUTES.items():
        for target in disguises(route):
            for verb in {method, "POST"}:
                status, headers, payload = raw_request(stack.gateway_port, verb, target, body)
                answers[f"{verb} {target}"] = status
                # Whatever the gateway answers, it is JSON, never nginx's HTML page, and never a success.
                assert status >= 400, (verb, target, status, payload[:200])
                assert headers.get("content-type", "").startswith("application/json"), (verb, target, payload[:200])
                json.loads(payload)
    assert dev_route_hits(engine) == {}, "a dev route was reached through the gateway"
    print(
        f"{len(answers)} attempts, answers by status: "
        f"{ {s: list(answers.values()).count(s) for s in sorted(set(answers.values()))} }"
    )

    # The evidence is sound: the engine does serve the dev routes, and counts a request to one.
    with urllib.request.urlopen(f"{engine}/is_sleeping", timeout=30) as response:
        assert json.loads(response.read()) == {"is_sleeping": False}
    eventually(lambda: dev_route_hits(engine) == {"/is_sleeping": 1.0}, 10, "vLLM counting /is_sleeping")
