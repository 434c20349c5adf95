"""The client port's model controls (`POST /models/load`, `/models/unload`, llama.cpp router's, as Open
WebUI calls them) on the real HTTP app over the fake shell: who may call them, what a bad request gets,
and what an unload refuses to cut off."""

from __future__ import annotations

from typing import Any

from tests.unit.test_supervisor import begin, ready
from waker.core.lifecycle import State
from waker.errors import StartError
from waker.nginx.render import NGINX_ERRORS

ON = {"client_model_control": True}


async def answer(response) -> tuple[int, dict[str, Any]]:
    return response.status, await response.json()


async def test_the_client_key_is_checked_as_nginx_checks_it(api):
    shell, client = await api({"id": "a"}, gateway={**ON, "api_keys": ("sk-one", "sk-two")})
    code, message = NGINX_ERRORS[401]
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic sk-one"}, {"x-api-key": ""}):
        refused = await client.post("/models/load", json={"model": "a"}, headers=headers)
        assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer", headers
        assert (await refused.json())["error"] == {  # word for word what nginx answers
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": code,
        }
    assert shell.supervisor.state("a") is State.STOPPED  # nothing was done for them
    loaded = await client.post("/models/load", json={"model": "a"}, headers={"Authorization": "Bearer sk-two"})
    assert loaded.status == 200 and shell.supervisor.state("a") is State.READY
    unloaded = await client.post("/models/unload", json={"model": "a"}, headers={"x-api-key": "sk-one"})
    assert unloaded.status == 200 and shell.supervisor.state("a") is State.STOPPED


async def test_a_wrong_key_is_told_so_before_that_the_controls_are_off(api):
    shell, client = await api({"id": "a"}, gateway={"api_keys": ("sk-one",)})
    assert (await client.post("/models/unload", json={"model": "a"})).status == 401  # no hint to a stranger
    off = await client.post("/models/unload", json={"model": "a"}, headers={"x-api-key": "sk-one"})
    status, body = await answer(off)
    assert status == 403 and body["error"]["code"] == "client_model_control_disabled"
    assert "/models/unload changed nothing" in body["error"]["message"]


async def test_a_bad_body_or_an_unknown_model_is_refused_naming_the_models(api):
    shell, client = await api(
        {"id": "a", "aliases": ["small"]},
        {"id": "b"},
        {"id": "old", "status": "disabled", "notes": "superseded by b"},
        gateway=ON,
    )
    for body, status, code in (
        (b'{"model": "a"', 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'["a"]', 400, "invalid_body"),
        (b'{"model": 3}', 400, "invalid_body"),
        (b'{"id": "a"}', 400, "invalid_body"),
        (b'{"model": "nope"}', 404, "model_not_found"),
        (b'{"model": "old"}', 404, "model_disabled"),
    ):
        refused = await client.post("/models/load", data=body, headers={"Content-Type": "application/json"})
        error = (await refused.json())["error"]
        assert (refused.status, error["code"]) == (status, code), body
        if code != "invalid_json":
            assert error["message"].endswith("a, b"), error  # the models served, never the disabled one
    disabled = (await (await client.post("/models/unload", json={"model": "old"})).json())["error"]["message"]
    assert "disabled in the config: superseded by b" in disabled
    assert shell.driver.starts == 0
    by_alias = await (await client.post("/models/load", json={"model": "small"})).json()
    assert by_alias["id"] == "a" and by_alias["success"] is True and by_alias["state"] == "ready"


async def test_a_load_that_cannot_start_answers_why_with_the_models_state(api):
    shell, client = await api({"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6}, gateway=ON)
    shell.driver.outcomes["a"].append(StartError(503, "model_exited", "model 'a' exited with code 1 while loading"))
    status, body = await answer(await client.post("/models/load", json={"model": "a"}))
    assert status == 503
    assert body["error"]["code"] == "model_exited" and "exited with code 1" in body["error"]["message"]
    assert (body["error"]["model"], body["error"]["state"], body["error"]["status"]) == (
        "a",
        "failed",
        {"value": "failed"},
    )


async def test_a_load_refused_for_want_of_room_says_who_holds_the_gpu(api):
    shell, client = await api(
        {"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6}, gateway=ON, on_busy="reject"
    )
    await ready(shell, "a")
    begin(shell, "a", b"r1")
    refused = await client.post("/models/load", json={"model": "b"})
    status, body = await answer(refused)
    assert status == 429 and refused.headers["X-Busy-Model"] == "a" and int(refused.headers["Retry-After"]) > 0
    assert body["error"]["state"] == "stopped" and body["error"]["status"] == {"value": "unloaded"}
    assert shell.driver.up_calls("b") == 0


async def test_an_unload_never_cuts_off_a_request_nor_undoes_the_operators_choices(api):
    shell, client = await api({"id": "a"}, gateway=ON)

    async def unload() -> tuple[int, dict[str, Any]]:
        return await answer(await client.post("/models/unload", json={"model": "a"}))

    assert await unload() == (200, {**await unload_entry(client), "success": True, "outcome": "not running"})
    gate = shell.driver.hold("a")
    loading = await client.post("/admin/models/a/start?wait=false")
    assert loading.status == 202
    status, body = await unload()
    assert status == 409 and body["error"]["code"] == "model_loading"
    gate.set_result(None)
    await shell.reach("a", State.READY)
    begin(shell, "a", b"r1")
    status, body = await unload()
    assert status == 409 and body["error"]["code"] == "model_busy"
    assert "1 request(s) in flight" in body["error"]["message"]
    shell.control.set_pinned("a", True)
    status, body = await unload()
    assert status == 409 and body["error"]["code"] == "model_pinned" and "waker unpin a" in body["error"]["message"]
    assert shell.supervisor.state("a") is State.READY and shell.driver.count("down", "a") == 0


async def test_an_unload_leaves_a_failed_model_in_its_back_off(api):
    shell, client = await api({"id": "a"}, gateway=ON, max_start_failures=1, start_backoff="60s")
    shell.driver.outcomes["a"].append(StartError(503, "model_exited", "boom"))
    assert (await client.post("/models/load", json={"model": "a"})).status == 503
    status, body = await answer(await client.post("/models/unload", json={"model": "a"}))
    assert (status, body["outcome"], body["status"]) == (200, "not running", {"value": "failed"})
    retry = await client.post("/models/load", json={"model": "a"})
    assert (await retry.json())["error"]["code"] == "model_failed"  # still in back-off: the operator's call
    assert shell.driver.up_calls("a") == 1


async def unload_entry(client) -> dict[str, Any]:
    """Model a's entry in the OpenAI model list, as an unload's answer carries it."""
    listed = await (await client.get("/v1/models")).json()
    return next(m for m in listed["data"] if m["id"] == "a")
