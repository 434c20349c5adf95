"""An engine of either image (the fake vLLM or the real one) in a container, and the ways the
fidelity checks talk to it and boil what it says down to comparable rows (tests/e2e/fidelity_checks.py)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tests.e2e.stack import FAKE_IMAGE, LONG_CONTEXT, REAL_IMAGE, free_port
from tests.eventually import eventually_async

MODEL = "tiny"
CONTEXT = LONG_CONTEXT
# Tokens of a stream that runs for minutes on the real engine (130-400 tokens/s) and half a minute on
# the fake (1000 tokens/s): a check that needs a request in flight holds one open, so that a sleep or a
# queue behind it lands mid-stream whatever the load, and ends it by leaving.
HELD = CONTEXT - 24
FAKE_ONLY_KEYS = {"sent_at"}  # the fake stamps each chunk with its making time, for timing tests


@dataclass
class Engine:
    """A running engine container and what was seen while it started."""

    kind: str  # "fake" or "real"
    container: str
    url: str
    before_ready: list[str] = field(default_factory=list)  # HTTP answers before the first /health 200
    health: tuple[int, bytes] = (0, b"")

    def sigterm(self) -> None:
        subprocess.run(["docker", "kill", "--signal", "TERM", self.container], capture_output=True, check=True)

    def state(self) -> tuple[bool, int]:
        out = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.container],
            check=False,
            capture_output=True,
            text=True,
        ).stdout.split()
        return (out[0] == "true", int(out[1])) if out else (False, -1)

    def logs(self) -> str:
        result = subprocess.run(
            ["docker", "logs", "--tail", "60", self.container], check=False, capture_output=True, text=True
        )
        return result.stdout + result.stderr

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "--force", self.container], check=False, capture_output=True)


def engine_command(kind: str, config: str, extra: list[str]) -> list[str]:
    """`docker run` arguments for one engine; both answer to the name "tiny" with a CONTEXT-token context.
    Config "main": sleep routes on (dev mode) and --max-num-seqs 1; "plain": neither."""
    env = ["--env", "VLLM_SERVER_DEV_MODE=1"] if config == "main" else []
    flags = [
        "--port",
        "8000",
        "--served-model-name",
        MODEL,
        "--max-model-len",
        str(CONTEXT),
        *(["--max-num-seqs", "1"] if config == "main" else []),
        *extra,
    ]
    if kind == "real":
        # shm and the KV cache size: what vLLM's CPU build needs here (shared/real-vllm.md).
        return [
            *env,
            "--shm-size",
            "1g",
            "--env",
            "VLLM_CPU_KVCACHE_SPACE=1",
            REAL_IMAGE,
            "/models/tiny-llama",
            "--host",
            "0.0.0.0",
            "--enforce-eager",
            *flags,
        ]
    return [*env, FAKE_IMAGE, "serve", "fake/tiny", "--load-delay", "1", *flags]


async def start_engine(kind: str, config: str, extra: list[str] = ()) -> Engine:
    """Starts a container and waits for its first /health 200, noting every HTTP answer before it
    (vLLM gives none: it does not listen until the engine is ready)."""
    port = free_port()
    name = f"fidelity-{kind}-{config}-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(
        subprocess.run,
        [
            "docker",
            "run",
            "--detach",
            "--name",
            name,
            "--publish",
            f"127.0.0.1:{port}:8000",
            *engine_command(kind, config, list(extra)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    engine = Engine(kind, name, f"http://127.0.0.1:{port}")
    next_state_check = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def healthy() -> bool:
            nonlocal next_state_check
            try:
                async with session.get(f"{engine.url}/health") as response:
                    body = await response.read()
                    if response.status == 200:
                        engine.health = (response.status, body)
                        return True
                    engine.before_ready.append(str(response.status))
            except (TimeoutError, aiohttp.ClientError):
                pass  # nothing listens yet (Docker's proxy accepts, then drops the connection)
            if time.monotonic() >= next_state_check:  # `docker inspect` once a second, not every poll
                next_state_check = time.monotonic() + 1
                if not engine.state()[0]:
                    raise AssertionError(f"{name} exited while starting:\n{engine.logs()}")
            return False

        await eventually_async(healthy, 240 if kind == "real" else 30, f"{name} healthy", engine.logs)
    return engine


# ---- helpers ----


def keys(obj: dict) -> str:
    return ",".join(k for k in obj if k not in FAKE_ONLY_KEYS)


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def anonymous(chunk: dict) -> str:
    """A chunk, keys in order, without what differs from run to run: id, time, generated text (vLLM's
    abort chunk carries whatever tokens it had not sent yet), the fingerprint's build hash."""
    shown = {}
    for key, value in chunk.items():
        if key in ("id", "created", *FAKE_ONLY_KEYS):
            continue
        if key == "choices":
            choice = dict(value[0])
            if "delta" in choice:
                choice["delta"] = {name: "..." for name in choice["delta"]}
            else:
                choice["text"] = "..."
            value = [choice]
        elif key == "system_fingerprint":
            value = value.rsplit("-", 1)[0] + "-..."
        shown[key] = value
    return compact(shown)


async def post(session, url: str, body, **kwargs) -> tuple[int, dict | str]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}, **kwargs) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def metrics(session, url: str) -> dict[str, float]:
    """vLLM's series by name and the label that varies (finished_reason, sleep_state)."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    series = {}
    for name, labels, value in re.findall(r"^(vllm:\w+)\{([^}]*)\}\s+(\S+)$", text, re.MULTILINE):
        variant = re.search(r'(?:finished_reason|sleep_state)="(\w+)"', labels)
        series[f"{name}[{variant.group(1)}]" if variant else name] = float(value)
    return series


def completion(max_tokens: int, **extra) -> dict:
    return {"model": MODEL, "prompt": "hello", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, **extra}


def chat(max_tokens: int, **extra) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


@dataclass
class Stream:
    status: int
    content_type: str
    events: list  # parsed `data:` payloads: dicts, or the string "[DONE]"
    framing_ok: bool  # only `data: ...` lines, each followed by a blank line


async def read_stream(response, until: Callable[[list], bool] = lambda events: False) -> Stream:
    """Reads SSE events until the stream ends or `until(events)` holds; can be called again to go on."""
    events, framing_ok, after_data = [], True, False
    async for line in response.content:
        if line == b"\n":
            after_data = False
            continue
        framing_ok &= line.startswith(b"data: ") and not after_data
        after_data = True
        payload = line[6:].strip()
        events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
        if until(events):
            break
    return Stream(response.status, response.headers.get("Content-Type", ""), events, framing_ok)


def shape(events: list, tokens: int) -> str:
    """A stream as the kinds of its events: role, content (how many, against the tokens asked),
    the final chunk with its finish reason, usage, [DONE], error."""
    names = []
    for event in events:
        if event == "[DONE]":
            names.append("[DONE]")
        elif "error" in event:
            names.append("error")
        elif not event["choices"]:
            names.append("usage")
        elif "role" in event["choices"][0].get("delta", {}):
            names.append("role")
        elif event["choices"][0]["finish_reason"]:
            names.append(f"final({event['choices'][0]['finish_reason']})")
        else:
            names.append("content")
    runs = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    # The final chunk carries the last token: content chunks plus it make one per token.
    parts = []
    for name, count in runs:
        if name == "content":
            parts.append("content x (tokens - 1)" if count == tokens - 1 else f"content x {count} of {tokens - 1}")
        else:
            parts.append(name if count == 1 else f"{name} x {count}")
    return ", ".join(parts)
