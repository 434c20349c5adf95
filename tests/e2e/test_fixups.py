"""Request fix-ups (`fixups` per model), end to end: real nginx and njs rewriting the body on the way to
the model. The fake vLLM shows exactly what arrived (its x-fake-body-* headers: length and SHA-256);
the real vLLM shows that each request it refuses or mishandles without its fix-up is answered with it."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess

import openai
import pytest

from tests.e2e.stack import REAL_IMAGE, REAL_SCHEDULER, Stack, fake_model, real_model

pytestmark = pytest.mark.e2e

FIXUPS = ["max_tokens", "strip_tools", "alternate_roles", "include_usage", "thinking"]
TOOL_FIXUPS = ["force_tools", "thinking_off"]  # for a model with tools, so never with strip_tools
TOOL_PARSER = ["--enable-auto-tool-choice", "--tool-call-parser", "pythonic"]
NO_WHITESPACE = '{"backend": "xgrammar", "disable_any_whitespace": true}'
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def compact(doc: dict) -> bytes:
    """What njs's JSON.stringify makes of a parsed body: no spaces, keys in order, UTF-8 as is."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def send(
    stack: Stack, path: str, body: bytes, *, chunked: bool = False, method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.gateway_port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"}
        if chunked:
            connection.request(method, path, body=iter([body[:7], body[7:]]), headers=headers, encode_chunked=True)
        else:
            connection.request(method, path, body=body if method == "POST" else None, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def arrived(headers: dict[str, str], body: bytes) -> bool:
    return (
        int(headers["x-fake-body-bytes"]) == len(body)
        and headers["x-fake-body-sha256"] == hashlib.sha256(body).hexdigest()
    )


@pytest.fixture(scope="module")
def fake_stack(tmp_path_factory, docker_engine):
    """ "fx" (alias "fx-alias") declares every fix-up but those of a model with tools, with a context of
    100; "fy" those of a model with tools; "plain" declares none."""
    stack = Stack(
        models=[
            fake_model("fx", aliases=["fx-alias"], load_delay=0.3, fixups=FIXUPS, extra=["--max-model-len", "100"]),
            fake_model("plain", load_delay=0.3, extra=["--max-model-len", "100"]),
            fake_model("fy", load_delay=0.3, fixups=TOOL_FIXUPS, tools=True, extra=TOOL_PARSER),
            fake_model("fz", load_delay=0.3, fixups=["tool_hints", "alternate_roles"], tools=True, extra=TOOL_PARSER),
        ],
        tmp=tmp_path_factory.mktemp("fixups"),
    ).start()
    yield stack
    stack.stop()


REQUEST = {
    "model": "fx",
    "messages": [{"role": "user", "content": "héllo 🚀"}],
    "max_tokens": 5000,
    "tools": TOOLS,
    "tool_choice": "auto",
    "stream": False,
}
EXPECTED = {"model": "fx", "messages": [{"role": "user", "content": "héllo 🚀"}], "stream": False}


@pytest.mark.parametrize("routing", ["body", "path", "alias path", "chunked body"])
def test_a_rewritten_body_arrives_whole_with_its_length_and_the_header_names_the_fixups(fake_stack, routing):
    path = (
        "/v1/chat/completions"
        if routing.endswith("body")
        else ("/v1/fx-alias/chat/completions" if routing.startswith("alias") else "/v1/fx/chat/completions")
    )
    status, headers, reply = send(
        fake_stack, path, json.dumps(REQUEST, indent=2).encode(), chunked=routing.startswith("chunked")
    )
    assert status == 200, reply
    assert headers["x-waker-fixups"] == "max_tokens,strip_tools"
    assert arrived(headers, compact(EXPECTED))
    # Without the fix-ups the same engine refuses each part: the fake, like vLLM, checks both.
    for part, needle in (
        ({"max_tokens": 5000}, "cannot be greater than max_model_len=100"),
        ({"tools": TOOLS}, '"auto" tool choice requires --enable-auto-tool-choice'),
    ):
        status, headers, reply = send(
            fake_stack, "/v1/chat/completions", json.dumps({**EXPECTED, "model": "plain", **part}).encode()
        )
        assert status == 400 and needle in json.loads(reply)["error"]["message"]
        assert "x-waker-fixups" not in headers


SYSTEM_PARTS = [{"type": "text", "text": "rule one"}, {"type": "text", "text": "rule two"}]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
REWRITES = {
    "system parts folded, array and string turns merged": (
        {
            "messages": [
                {"role": "system", "content": SYSTEM_PARTS},
                {"role": "user", "content": [IMAGE]},
                {"role": "user", "content": "and this"},
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "[System Instruction]\nrule one\nrule two\n\n"},
                        IMAGE,
                        {"type": "text", "text": "and this"},
                    ],
                }
            ]
        },
        "alternate_roles",
    ),
    "an assistant first gets an empty user turn; tool turns kept apart": (
        {
            "messages": [
                {"role": "assistant", "content": "hi", "tool_calls": [{"id": "c1"}]},
                {"role": "tool", "tool_call_id": "c1", "content": "1"},
                {"role": "tool", "tool_call_id": "c2", "content": "2"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": " "},
                {"role": "assistant", "content": "hi", "tool_calls": [{"id": "c1"}]},
                {"role": "tool", "tool_call_id": "c1", "content": "1"},
                {"role": "tool", "tool_call_id": "c2", "content": "2"},
            ]
        },
        "alternate_roles",
    ),
    "Responses-style effort, other reasoning keys kept": (
        {"reasoning": {"effort": " None ", "summary": "auto"}, "messages": [{"role": "user", "content": "x"}]},
        {
            "reasoning": {"summary": "auto"},
            "messages": [{"role": "user", "content": "x"}],
            "chat_template_kwargs": {"enable_thinking": False, "thinking": False},
        },
        "thinking",
    ),
    "an unknown effort is only removed": (
        {"reasoningEffort": "turbo", "messages": [{"role": "user", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}]},
        "thinking",
    ),
    "the client's own switch wins": (
        {
            "reasoning_effort": "high",
            "chat_template_kwargs": {"thinking": False, "other": 1},
            "messages": [{"role": "user", "content": "x"}],
        },
        {"chat_template_kwargs": {"thinking": False, "other": 1}, "messages": [{"role": "user", "content": "x"}]},
        "thinking",
    ),
    "max_completion_tokens over the context, legacy functions": (
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 101,
            "functions": [{"name": "f"}],
            "function_call": "auto",
        },
        {"messages": [{"role": "user", "content": "x"}]},
        "max_tokens,strip_tools",
    ),
}


USER = {"role": "user", "content": "x"}
OFF = {"enable_thinking": False, "thinking": False}
ANSWERED = [
    USER,
    {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
]
TOOL_REWRITES = {
    "tools with auto: required, and thinking off": (
        {"messages": [USER], "tools": TOOLS, "tool_choice": "auto"},
        {"messages": [USER], "tools": TOOLS, "tool_choice": "required", "chat_template_kwargs": OFF},
        "force_tools,thinking_off",
    ),
    "tools with no choice: required; a client's other template switches kept": (
        {"messages": [USER], "tools": TOOLS, "chat_template_kwargs": {"other": 1}},
        {"messages": [USER], "tools": TOOLS, "chat_template_kwargs": {"other": 1, **OFF}, "tool_choice": "required"},
        "force_tools,thinking_off",
    ),
    "a tool has answered: the model may answer in text": (
        {"messages": ANSWERED, "tools": TOOLS, "tool_choice": "auto"},
        {"messages": ANSWERED, "tools": TOOLS, "tool_choice": "auto", "chat_template_kwargs": OFF},
        "thinking_off",
    ),
}


INSTRUCTION = (
    "CRITICAL INSTRUCTIONS:\n1. When calling tools, you must provide array and object arguments as raw JSON "
    'values (e.g. [1, 2] or {"key": "value"}), NOT as JSON strings. Do not quote these values.\n2. If the user '
    'greets you (e.g. "Hi", "Hello"), reply with text. Do NOT call tools unless specifically needed for a task.'
)
SCHEMA_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "question",
            "description": "Ask the user.",
            "parameters": {
                "type": "object",
                "properties": {
                    "options": {"type": "array", "items": {"type": "object"}},
                    "limits": {"type": "object", "description": "bounds"},
                    "text": {"type": "string"},
                },
            },
        },
    }
]
HINTED_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "question",
            "description": "Ask the user. Only use this tool if you need to gather specific information for a task. "
            "Do not use for general greetings.",
            "parameters": {
                "type": "object",
                "properties": {
                    "options": {
                        "type": "array",
                        "items": {"type": "object", "description": "Provide as raw JSON, NOT a string"},
                        "description": "Provide as raw JSON, NOT a string",
                    },
                    "limits": {"type": "object", "description": "bounds (Provide as raw JSON, NOT a string)"},
                    "text": {"type": "string"},
                },
                "description": "Provide as raw JSON, NOT a string",
            },
        },
    }
]
HINT_REWRITES = {
    "tool hints, then the roles folded as the original did": (
        {"messages": [{"role": "system", "content": "be brief"}, USER], "tools": SCHEMA_TOOLS},
        {
            "messages": [
                {"role": "user", "content": f"[System Instruction]\nbe brief\n\n{INSTRUCTION}\n\nx"},
            ],
            "tools": HINTED_TOOLS,
        },
        "tool_hints,alternate_roles",
    ),
}
# Each rewrite, and the model it goes to: "fx" for the fix-ups of a model without tools, "fy" and "fz" with.
ALL_REWRITES = {
    **{name: ("fx", *case) for name, case in REWRITES.items()},
    **{name: ("fy", *case) for name, case in TOOL_REWRITES.items()},
    **{name: ("fz", *case) for name, case in HINT_REWRITES.items()},
}


@pytest.mark.parametrize("name", list(ALL_REWRITES))
def test_each_rewrite_sends_exactly_the_documented_body(fake_stack, name):
    model, sent, expected, applied = ALL_REWRITES[name]
    status, headers, reply = send(fake_stack, "/v1/chat/completions", json.dumps({"model": model, **sent}).encode())
    assert status == 200, reply
    assert headers["x-waker-fixups"] == applied
    assert arrived(headers, compact({"model": model, **expected}))


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "fy", "messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"thinking": true}}',
        (
            b'{"model": "fy", "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}],'
            b' "tool_choice": {"type": "function", "function": {"name": "f"}},'
            b' "chat_template_kwargs": {"enable_thinking": true}}'
        ),
        b'{"model": "fy", "messages": [], "tools": [], "chat_template_kwargs": {"enable_thinking": false}}',
    ],
    ids=["thinking asked for", "a named function, thinking on", "no tools, thinking off already"],
)
def test_a_model_with_tools_gets_the_clients_own_choices_byte_for_byte(fake_stack, body):
    status, headers, reply = send(fake_stack, "/v1/chat/completions", body)
    assert status == 200, reply
    assert arrived(headers, body) and "x-waker-fixups" not in headers


@pytest.mark.parametrize(
    "body",
    [
        b'{\n  "model": "fx",\n  "messages": [{"role": "user", "content": "hi"}],  "max_tokens": 100.0\n}',
        (
            b'{"model":"fx","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},'
            b'{"role":"user","content":"c"}],"chat_template_kwargs":{"enable_thinking":false},"stream":false}'
        ),
    ],
    ids=["max_tokens at the context", "alternating turns, no effort"],
)
def test_a_request_no_fixup_changes_goes_byte_for_byte_without_a_header(fake_stack, body):
    status, headers, reply = send(fake_stack, "/v1/chat/completions", body)
    assert status == 200, reply
    assert arrived(headers, body)
    assert "x-waker-fixups" not in headers


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00 not json at all \x80",
        b'["a", "JSON", "array"]',
        b"",
        b'{"max_tokens": 5000, "messages": [{"role": "user"',
    ],
    ids=["binary", "JSON array", "empty", "truncated JSON"],
)
def test_a_body_that_is_not_a_json_object_passes_through_untouched(fake_stack, body):
    status, headers, _ = send(fake_stack, "/v1/fx/chat/completions", body)
    assert status in (200, 400, 422)  # the fake's own answer to the body, as vLLM's would be
    assert arrived(headers, body)
    assert "x-waker-fixups" not in headers


def test_a_get_through_a_fixup_location_still_works(fake_stack):
    status, headers, reply = send(fake_stack, "/v1/fx/models", b"", method="GET")
    assert status == 200 and json.loads(reply)["data"][0]["id"] == "fx"
    assert "x-waker-fixups" not in headers


def test_the_replay_after_a_cold_start_gets_the_fixups(fake_stack):
    for routing, path in (("body", "/v1/chat/completions"), ("path", "/v1/fx/chat/completions")):
        assert fake_stack.cli("stop", "fx").returncode == 0
        status, headers, reply = send(fake_stack, path, json.dumps(REQUEST).encode())
        assert status == 200, (routing, reply)
        assert headers["x-waker-fixups"] == "max_tokens,strip_tools", routing
        assert arrived(headers, compact(EXPECTED)), routing


# ---- the real engine: each request vLLM refuses or mishandles without its fix-up, answered with it ----

# A chat template as strict as Gemma's (no system role, user and assistant alternating) with Qwen3's
# thinking switch: `enable_thinking` false closes an empty think block, so the prompt grows by the
# tokens of that block. vLLM takes a template given inline in --chat-template.
STRICT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
CONTEXT = 512
READY_TIMEOUT = 300


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory, docker_engine):
    """Real vLLMs with the strict template: "strict" with every fix-up but those of a model with tools,
    and no tool parser; "coder" with a tool parser and those of a model with tools (started by its own
    test, beside "strict"). Requests to the gateway get the fix-ups; the same engine on its own port
    (stack.model_url) shows vLLM without."""
    if subprocess.run(["docker", "image", "inspect", REAL_IMAGE], capture_output=True, check=False).returncode != 0:
        pytest.fail(f"image {REAL_IMAGE} is missing: run scripts/build-test-images", pytrace=False)
    stack = Stack(
        models=[
            real_model(
                "strict",
                max_model_len=CONTEXT,
                fixups=FIXUPS,
                idle_timeout="1h",
                extra=["--chat-template", STRICT_TEMPLATE],
            ),
            real_model(
                "coder",
                max_model_len=CONTEXT,
                fixups=[*TOOL_FIXUPS, "tool_hints", "alternate_roles"],
                tools=True,
                idle_timeout="1h",
                # JSON without free whitespace: the random-weight model, given the choice, writes
                # whitespace until max_tokens instead of the call's next character.
                extra=["--chat-template", STRICT_TEMPLATE, *TOOL_PARSER, "--structured-outputs-config", NO_WHITESPACE],
            ),
        ],
        tmp=tmp_path_factory.mktemp("fixups-real"),
        scheduler=REAL_SCHEDULER,
    ).start()
    yield stack
    stack.stop()


def gateway(stack: Stack, path_routed: bool = False) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.url}/v1{'/strict' if path_routed else ''}",
        api_key="unused",
        timeout=READY_TIMEOUT,
        max_retries=0,
    )


def engine(stack: Stack, model: str = "strict") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.model_url(model)}/v1", api_key="unused", timeout=60, max_retries=0)


def ask(client: openai.OpenAI, messages=None, model: str = "strict", **extra):
    """A deterministic chat completion (3 tokens unless told; openai.NOT_GIVEN for none): (reply, headers)."""
    extra.setdefault("max_tokens", 3)
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages or [{"role": "user", "content": "hello"}],
        temperature=0,
        extra_body={"ignore_eos": True, **extra.pop("extra_body", {})},
        **extra,
    )
    return raw.parse(), raw.headers


def refused(client: openai.OpenAI, messages=None, **extra) -> str:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, messages, **extra)
    return str(caught.value)


def test_real_max_tokens_over_the_context_cold_and_warm_both_routings(real_stack):
    """The module's first request starts the model: the replay after the start (@retry) gets the fix-up."""
    reply, headers = ask(gateway(real_stack, path_routed=True), max_tokens=5000)
    assert headers["x-waker-fixups"] == "max_tokens"
    room = CONTEXT - reply.usage.prompt_tokens  # vLLM generates what the context leaves
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == room
    assert "max_tokens=5000 cannot be greater than max_model_len=512" in refused(engine(real_stack), max_tokens=5000)
    assert "max_completion_tokens=9000 cannot be greater than max_model_len=512" in refused(
        engine(real_stack), max_tokens=openai.NOT_GIVEN, max_completion_tokens=9000
    )
    reply, headers = ask(gateway(real_stack), max_tokens=openai.NOT_GIVEN, max_completion_tokens=9000)
    assert headers["x-waker-fixups"] == "max_tokens" and reply.usage.completion_tokens == room
    reply, headers = ask(gateway(real_stack), max_tokens=CONTEXT)  # within the context: left as it is
    assert "x-waker-fixups" not in headers and reply.usage.completion_tokens == room


def test_real_tools_for_a_model_without_a_tool_parser(real_stack):
    assert '"auto" tool choice requires --enable-auto-tool-choice' in refused(engine(real_stack), tools=TOOLS)
    assert 'tool_choice="required" requires --tool-call-parser' in refused(
        engine(real_stack), tools=TOOLS, tool_choice="required"
    )
    for choice in ("auto", "required"):
        reply, headers = ask(gateway(real_stack), tools=TOOLS, tool_choice=choice, parallel_tool_calls=False)
        assert headers["x-waker-fixups"] == "strip_tools"
        assert reply.choices[0].message.tool_calls is None and reply.usage.completion_tokens == 3
        assert reply.choices[0].message.content == ask(engine(real_stack))[0].choices[0].message.content


def test_real_strict_template_system_prompt_and_repeated_turns(real_stack):
    sent = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]
    assert "System role not supported" in refused(engine(real_stack), sent)
    assert "Conversation roles must alternate" in refused(engine(real_stack), sent[1:])
    folded = [
        {"role": "user", "content": "[System Instruction]\nbe brief\n\nhello\n\nagain"},
        {"role": "assistant", "content": "one\n\ntwo"},
        {"role": "user", "content": "three"},
    ]
    reply, headers = ask(gateway(real_stack), sent)
    assert headers["x-waker-fixups"] == "alternate_roles"
    direct, _ = ask(engine(real_stack), folded)  # what the fix-up sends, sent by hand: the same prompt
    assert reply.usage.prompt_tokens == direct.usage.prompt_tokens
    assert reply.choices[0].message.content == direct.choices[0].message.content
    reply, headers = ask(gateway(real_stack), folded)
    assert "x-waker-fixups" not in headers and reply.choices[0].message.content == direct.choices[0].message.content


def test_real_streams_always_end_with_usage(real_stack):
    def stream(client):
        raw = client.chat.completions.with_raw_response.create(
            model="strict",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=4,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return list(raw.parse()), raw.headers

    chunks, _ = stream(engine(real_stack))
    assert all(chunk.usage is None for chunk in chunks)  # vLLM reports usage only when asked
    chunks, headers = stream(gateway(real_stack))
    assert headers["x-waker-fixups"] == "include_usage"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == ask(engine(real_stack), max_tokens=4)[0].choices[0].message.content
    )


def test_real_reasoning_effort_switches_the_templates_thinking(real_stack):
    def prompt_tokens(client, **extra) -> tuple[int, dict]:
        reply, headers = ask(client, **extra)
        return reply.usage.prompt_tokens, headers

    thinking_on, _ = prompt_tokens(engine(real_stack), extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    thinking_off, _ = prompt_tokens(engine(real_stack), extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert thinking_off > thinking_on  # the empty think block that switches thinking off
    # vLLM refuses an effort outside its own list, and ignores the effort where Responses-style clients put it.
    assert "body.reasoning_effort" in refused(engine(real_stack), reasoning_effort="auto")
    assert prompt_tokens(engine(real_stack), extra_body={"reasoning": {"effort": "none"}})[0] == thinking_on
    for effort, expected in (("auto", thinking_on), ("none", thinking_off), ("high", thinking_on)):
        tokens, headers = prompt_tokens(gateway(real_stack), extra_body={"reasoning_effort": effort})
        assert (tokens, headers["x-waker-fixups"]) == (expected, "thinking"), effort
    tokens, headers = prompt_tokens(gateway(real_stack), extra_body={"reasoning": {"effort": "none"}})
    assert (tokens, headers["x-waker-fixups"]) == (thinking_off, "thinking")
    # A switch the client set itself wins over the effort.
    tokens, _ = prompt_tokens(
        gateway(real_stack), extra_body={"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}}
    )
    assert tokens == thinking_on


# A tool whose arguments can only be {}: the call vLLM's structured output makes for it is short.
CLOSED_TOOL = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    }
]


def test_real_a_model_that_answers_in_text_is_asked_for_a_call_and_thinks_only_when_asked(real_stack):
    """force_tools: given tools and "auto", the engine answers in text (the tiny model writes no call);
    through the gateway the request asks for a call, and vLLM's structured output makes it. tool_hints:
    the instruction reaches the prompt. thinking_off: the prompt is the one of thinking off, unless the
    request switches thinking on itself."""
    # Through the gateway first: the request starts the model, and the replay after the start is rewritten.
    # ignore_eos off: the call ends where its grammar does, with the end of sequence.
    call_once = {"tools": CLOSED_TOOL, "tool_choice": "auto", "max_tokens": 64, "extra_body": {"ignore_eos": False}}
    reply, headers = ask(gateway(real_stack), model="coder", **call_once)
    assert headers["x-waker-fixups"] == "force_tools,tool_hints,alternate_roles,thinking_off"
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {}
    direct, _ = ask(engine(real_stack, "coder"), model="coder", **call_once)
    assert not direct.choices[0].message.tool_calls, direct
    # tool_hints: the instruction reaches the prompt, folded into the first user turn (the template
    # refuses a system role); the engine alone gets the user's turn only.
    no_call = {"tools": CLOSED_TOOL, "tool_choice": "none"}
    hinted, headers = ask(gateway(real_stack), model="coder", **no_call)
    assert headers["x-waker-fixups"] == "tool_hints,alternate_roles,thinking_off"
    plain, _ = ask(engine(real_stack, "coder"), model="coder", **no_call)
    assert hinted.usage.prompt_tokens > plain.usage.prompt_tokens + 40, (hinted.usage, plain.usage)

    def prompt_tokens(client, **extra) -> int:
        return ask(client, model="coder", **extra)[0].usage.prompt_tokens

    thinking_off = prompt_tokens(
        engine(real_stack, "coder"), extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    thinking_on = prompt_tokens(engine(real_stack, "coder"))
    assert thinking_off > thinking_on  # the empty think block that switches thinking off
    assert prompt_tokens(gateway(real_stack)) == thinking_off
    assert (
        prompt_tokens(gateway(real_stack), extra_body={"chat_template_kwargs": {"enable_thinking": True}})
        == thinking_on
    )


def test_real_the_engine_joins_text_parts_itself_for_a_template_that_prints_a_string(real_stack):
    """Why no fix-up flattens array content (the original's normalizeTextContent, for templates that
    print message['content'] as a string): vLLM 0.32 sees what the template reads and joins the text
    parts itself, so the same words as parts or as a string make the same prompt."""
    ask(gateway(real_stack))  # the model runs
    as_parts, _ = ask(engine(real_stack), messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    as_string, _ = ask(engine(real_stack), messages=[{"role": "user", "content": "hello"}])
    assert as_parts.usage.prompt_tokens == as_string.usage.prompt_tokens
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content
