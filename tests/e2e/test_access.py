"""Access control at the gateway: client API keys checked by nginx before anything else, the CORS
allow-list, and a model server's own permissive CORS never reaching browsers."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.e2e.stack import fake_model

pytestmark = pytest.mark.e2e

KEY, OTHER_KEY = "sk-test-key-0001", "sk-from-a-file-0002"


@pytest.fixture
def stack(make_stack, tmp_path, monkeypatch):
    monkeypatch.setenv("WAKER_TEST_KEY", OTHER_KEY)
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\n${WAKER_TEST_KEY}\n")
    return make_stack(
        [fake_model("alpha", load_delay=0.2)],
        gateway={
            "api_keys": [KEY],
            "api_keys_file": str(keys),
            "cors_origins": ["http://localhost:3000", "vscode-webview://*"],
        },
    )


async def request(session, stack, headers=None, method="POST", path="/v1/chat/completions"):
    body = b'{"model": "alpha", "messages": []}' if method == "POST" else None
    async with session.request(method, stack.url + path, data=body, headers=headers or {}) as response:
        return response.status, response.headers, await response.read()


async def test_requests_without_a_valid_key_never_reach_the_waker(stack):
    async with aiohttp.ClientSession() as session:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key-123"},
            {"x-api-key": "nope-nope"},
            {"Authorization": KEY},
        ):
            for path in ("/v1/chat/completions", "/v1/alpha/chat/completions"):
                status, response_headers, body = await request(session, stack, headers, path=path)
                assert status == 401 and response_headers["WWW-Authenticate"] == "Bearer"
                assert json.loads(body)["error"]["code"] == "invalid_api_key"
        async with session.get(f"{stack.waker_url}/_stats") as response:
            assert (await response.json())["wakes"] == 0
    assert stack.containers() == []


async def test_keys_from_the_config_and_the_keys_file_in_either_header(stack):
    async with aiohttp.ClientSession() as session:
        for headers in (
            {"Authorization": f"Bearer {KEY}"},
            {"x-api-key": KEY},
            {"Authorization": f"Bearer {OTHER_KEY}"},
        ):
            status, _, _ = await request(session, stack, headers)
            assert status == 200
        status, _, _ = await request(session, stack, method="GET", path="/healthz")
        assert status == 200  # monitoring needs no key


async def test_cors_allow_list_and_no_upstream_wildcard(stack):
    auth = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await request(session, stack, {**auth, "Origin": "http://localhost:3000"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        status, headers, _ = await request(session, stack, {**auth, "Origin": "vscode-webview://abc123"})
        assert headers["Access-Control-Allow-Origin"] == "vscode-webview://abc123"
        status, headers, _ = await request(session, stack, {**auth, "Origin": "https://evil.example"})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers  # the model said "*"
        preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
        status, headers, _ = await request(session, stack, preflight, method="OPTIONS")
        assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
        status, _, _ = await request(session, stack, {"Origin": "https://evil.example"}, method="OPTIONS")
        assert status == 401
