"""Real clients nobody here wrote, used as they are: the official OpenAI Python SDK (sync, async,
streaming, embeddings, both URL styles) and the official `openai` npm package from Node.js."""

from __future__ import annotations

import json
import shutil
import subprocess

import openai
import pytest

from tests.e2e.stack import REPO, fake_model

pytestmark = pytest.mark.e2e

NODE_CLIENT = REPO / "tests" / "node"


@pytest.fixture
def stack(make_stack):
    return make_stack([fake_model("chat-model", aliases=["chat-alias"], load_delay=0.3)])


def test_python_sdk_sync_chat_completion_and_embeddings_body_routed(stack):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "Hello"}], max_tokens=3
    )
    assert reply.model == "chat-model" and reply.choices[0].message.content == "tok0 tok1 tok2"
    embedding = client.embeddings.create(model="chat-alias", input="hello")
    assert embedding.data[0].embedding == [0.1, 0.2, 0.3]
    assert [m.id for m in client.models.list()] == ["chat-model"]


def test_python_sdk_path_routed_base_url(stack):
    client = openai.OpenAI(base_url=f"{stack.url}/v1/chat-alias", api_key="unused")
    reply = client.completions.create(model="anything", prompt="Hi", max_tokens=2)
    assert reply.choices[0].text == "tok0 tok1"


async def test_python_sdk_async_streaming(stack):
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="chat-model", stream=True, max_tokens=5, messages=[{"role": "user", "content": "Count"}]
    )
    pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(pieces) == "tok0 tok1 tok2 tok3 tok4 "
    await client.close()


def test_python_sdk_sees_unknown_models_as_not_found(stack):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["code"] == "model_not_found" and "chat-model" in caught.value.body["message"]


def test_node_openai_package_chat_and_stream(stack):
    node = shutil.which("node")
    assert node, "Node.js is not installed"
    assert (NODE_CLIENT / "node_modules" / "openai").exists(), "run: npm ci --prefix tests/node"
    result = subprocess.run(
        [node, str(NODE_CLIENT / "client.mjs"), f"{stack.url}/v1", "chat-model"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer == {"chat": "tok0 tok1 tok2", "stream": "tok0 tok1 tok2 tok3 "}
