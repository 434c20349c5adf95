"""The model's events as the rest of a loading stream: one id, one creation time, one role."""

from __future__ import annotations

import json

from tests.unit.fake_docker import VLLM_CHAT_STREAM
from waker.http.sse import Continuation

ERROR = b'data: {"error":{"message":"boom","type":"server_error","param":null,"code":"x"}}\n\n'


def test_each_chunk_takes_the_streams_id_and_time_and_the_role_goes():
    out = Continuation("chatcmpl-waker-1", 42).feed(VLLM_CHAT_STREAM)
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in out.split(b"\n\n")[:-2]]
    assert {(c["id"], c["created"]) for c in chunks} == {("chatcmpl-waker-1", 42)}
    assert [c["choices"][0]["delta"] for c in chunks] == [{"content": ""}, {"content": "Hello"}, {"content": ""}]
    assert out.endswith(b"data: [DONE]\n\n")


def test_events_split_across_reads_wait_for_their_end():
    whole = Continuation("s", 1).feed(VLLM_CHAT_STREAM)
    rest = Continuation("s", 1)
    pieces = [rest.feed(VLLM_CHAT_STREAM[i : i + 7]) for i in range(0, len(VLLM_CHAT_STREAM), 7)]
    assert b"".join(pieces) == whole and rest.end() == b""


def test_what_is_not_a_chunk_passes_as_it_came():
    rest = Continuation("s", 1)
    for event in (ERROR, b": keep-alive\n\n", b"data: [DONE]\n\n", b"data: {not json\n\n", b"data: [1]\n\n"):
        assert rest.feed(event) == event
    assert rest.feed(b"data: {cut") == b"" and rest.end() == b"data: {cut"
