"""A fake vLLM OpenAI server for tests: vLLM's HTTP surface, its load behaviour, and failure modes.

What it copies from vLLM 0.32.0 (status codes, JSON bodies, SSE framing, /metrics, sleep mode, SIGTERM)
is checked against the real engine by tests/e2e/test_fidelity.py; tests/fake_vllm/README.md lists that
and where the fake knowingly differs.

Like vLLM it does not listen until loading is over (`--load-delay`). Failure modes (`--fail`):
  exit_during_load   print a few log lines and exit with --exit-code instead of listening
  never_healthy      listen, but /health answers 503 forever
  crash_after:N      exit abruptly after serving N model requests
What SIGTERM does to requests in flight (`--on-sigterm`), each an outcome seen from the real engine:
  abort   (default) streams end with finish_reason "abort" and [DONE]; the process exits at once
  error   streams end with an InternalServerError chunk and [DONE] (the engine died first)
  hang    requests never end; the process exits when their clients have gone
Sleep mode (with VLLM_SERVER_DEV_MODE=1), beyond what vLLM's CPU build can show: the GPU memory held
awake (`--gpu-memory-utilization`) and asleep (`--sleep-memory`, fake-only), reported as the
`fake:gpu_memory_held` gauge; `--wake-delay S` for the wake that makes it fully awake; and every wake
failing as chosen (`--wake-fail`), each a GB10 report (shared/real-vllm.md):
  hang    the wake call never answers, the engine stays asleep
  crash   the process exits with code 1 during the wake call, which gets no answer
  wedge   the wake answers "awake" and /health stays 200, but no request is ever served again
Every response carries x-fake-* headers describing the request as received (method, path, body
length and SHA-256), so tests can prove that bytes arrived intact. Runs on aiohttp 3.8 (Debian 12).
"""

import argparse
import asyncio
import collections
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid

from aiohttp import web

INSTANCE = uuid.uuid4().hex[:12]
VERSION = "0.32.0"  # the vLLM release whose behaviour this fake copies
FINGERPRINT = f"vllm-{VERSION}-fake"
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default, which vLLM keeps
CHAT_NATURAL_LENGTH = 8  # a chat without max_tokens: the fake "model" stops by itself after this many
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
COMPACT = (",", ":")  # vLLM serialises its responses with pydantic: no spaces


def json_response(body, status=200, headers=None):
    """JSON as vLLM sends it: compact, and `application/json` without a charset."""
    return web.Response(
        body=json.dumps(body, separators=COMPACT).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def env_flag(name, truthy):
    return os.environ.get(name, "0").strip().lower() in truthy


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="serve")
    parser.add_argument("model_path", nargs="?", default="fake/model")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--served-model-name", nargs="+", default=None)
    # Without it the fake has no context window at all (vLLM takes one from the model's config), so
    # that multi-megabyte bodies still reach it.
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=256)  # vLLM's default on most GPUs
    parser.add_argument("--enable-auto-tool-choice", action="store_true")
    parser.add_argument("--tool-call-parser", default=None)
    parser.add_argument("--load-delay", type=float, default=float(os.environ.get("FAKE_LOAD_DELAY", "0")))
    parser.add_argument("--tokens-per-second", type=float, default=float(os.environ.get("FAKE_TPS", "1000")))
    parser.add_argument("--fail", default=os.environ.get("FAKE_FAIL", ""))
    parser.add_argument("--exit-code", type=int, default=int(os.environ.get("FAKE_EXIT_CODE", "3")))
    parser.add_argument(
        "--on-sigterm", choices=("abort", "error", "hang"), default=os.environ.get("FAKE_ON_SIGTERM", "abort")
    )
    # Fake-only: MiB of memory taken (allocated and written) during the load, as a GPU engine's
    # weights, KV cache and compile heaps take a unified-memory machine's memory, and held while serving.
    parser.add_argument("--load-memory", type=int, default=int(os.environ.get("FAKE_LOAD_MEMORY_MIB", "0")))
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.0)
    parser.add_argument("--sleep-memory", type=float, default=None)  # fake-only; default: nothing freed
    parser.add_argument("--wake-delay", type=float, default=float(os.environ.get("FAKE_WAKE_DELAY", "0")))
    parser.add_argument(
        "--wake-fail", choices=("", "hang", "crash", "wedge"), default=os.environ.get("FAKE_WAKE_FAIL", "")
    )
    args, _unknown = parser.parse_known_args(argv)  # other vLLM flags are accepted and ignored
    return args


class BadRequest(Exception):
    """A request vLLM refuses: the status and the body of its error answer."""

    def __init__(self, message, kind="BadRequestError", param=None, status=400, body=None):
        super().__init__(message)
        self.status = status
        self.body = body or {"error": {"message": message, "type": kind, "param": param, "code": status}}


def validation_error(kind, loc, msg, value, ctx=None):
    """FastAPI's answer to a body its pydantic model rejects, as vLLM formats it."""
    detail = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx is not None:
        detail["ctx"] = ctx
    return BadRequest(f"1 validation error:\n  {detail!r}", kind="Bad Request", param=loc)


def int_field(doc, key):
    """An integer field as pydantic's lax mode reads it (3.0 and "3" are 3), or None when absent."""
    value = doc.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            message = "Input should be a valid integer, unable to parse string as an integer"
            raise validation_error("int_parsing", f"body.{key}", message, value) from None
    raise validation_error("int_type", f"body.{key}", "Input should be a valid integer", value)


def words(content):
    """Prompt length in tokens, counted as whitespace-separated words: deterministic, and for the
    real engine's tiny test model (one token per repeated word) close to exact."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(
            1 if isinstance(part, int) else words(part.get("text") if isinstance(part, dict) else part)
            for part in content
        )
    return 0


def client_gone(request):
    """Ends the handler the way aiohttp ends one whose client disconnected: quietly, no error logged."""
    if request.transport is None or request.transport.is_closing():
        raise asyncio.CancelledError()


class Seq:
    """One request inside the fake engine: its place in the queue, its token clock, how it ended early."""

    def __init__(self):
        self.loop = asyncio.get_event_loop()
        self.admitted = self.loop.create_future()
        self.running = False
        self.ended = None  # "abort", "error" or "hang" when the engine ends it before its last token
        self._tick = None

    async def tick(self, seconds):
        """Waits for the next token's time, or less when the request is ended meanwhile."""
        if self.ended:
            return
        self._tick = self.loop.create_future()
        handle = self.loop.call_later(seconds, self._wake)
        try:
            await self._tick
        finally:
            handle.cancel()

    def _wake(self):
        if self._tick is not None and not self._tick.done():
            self._tick.set_result(None)

    def end(self, reason):
        self.ended = self.ended or reason
        self._wake()
        if not self.admitted.done():
            self.admitted.set_result(None)


class Fake:
    def __init__(self, args):
        self.args = args
        self.names = args.served_model_name or [args.model_path]
        self.model = self.names[0]  # vLLM answers with its first served name, whichever was asked for
        self.skip_model_check = env_flag("VLLM_SKIP_MODEL_NAME_VALIDATION", ("1", "true"))
        self.served = 0
        self.crash_after = int(args.fail.split(":")[1]) if args.fail.startswith("crash_after:") else None
        self.running = 0
        self.queue = collections.deque()
        self.inflight = set()
        self.sleep_level = None  # None when awake
        self.asleep_parts = set()  # what a partial wake (tags) has not woken yet
        self.wedged = False  # after --wake-fail wedge: healthy, but nothing is served again
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.prompt_tokens = 0
        self.generation_tokens = 0

    def stamp(self, request, body, response):
        if "Origin" in request.headers:  # vLLM's CORS middleware allows every origin by default
            response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["x-fake-instance"] = INSTANCE
        response.headers["x-fake-method"] = request.method
        response.headers["x-fake-path"] = request.path_qs
        response.headers["x-fake-body-bytes"] = str(len(body))
        response.headers["x-fake-body-sha256"] = hashlib.sha256(body).hexdigest()
        return response

    def count_served(self):
        self.served += 1
        if self.crash_after is not None and self.served >= self.crash_after:
            print(f"fake-vllm: crashing after {self.served} requests", file=sys.stderr, flush=True)
            asyncio.get_event_loop().call_later(0.05, os._exit, 1)

    # ---- the engine: max_num_seqs running, the rest waiting in order; nothing runs while asleep ----

    def dispatch(self):
        while self.sleep_level is None and not self.wedged and self.running < self.args.max_num_seqs and self.queue:
            seq = self.queue.popleft()
            seq.running = True
            self.running += 1
            seq.admitted.set_result(None)

    def release(self, seq):
        if seq.running:
            seq.running = False
            self.running -= 1
            self.dispatch()
        elif seq in self.queue:
            self.queue.remove(seq)

    def end_all(self, reason):
        """The engine ends every request it holds: a sleep (mode=abort) or a shutdown."""
        self.queue.clear()
        for seq in self.inflight:
            seq.end(reason)

    # ---- HTTP ----

    async def health(self, request):
        if self.args.fail == "never_healthy":
            return web.Response(status=503)
        return web.Response(status=200)

    async def version(self, request):
        return json_response({"version": VERSION})

    async def models(self, request):
        created = int(time.time())
        card = {
            "id": self.model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.args.model_path,
            "parent": None,
            "max_model_len": self.args.max_model_len or 8192,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex[:16]}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return self.stamp(request, b"", json_response({"object": "list", "data": [card]}))

    async def metrics(self, request):
        labels = f'engine="0",model_name="{self.model}"'
        # The scheduler does not step while asleep, so its gauges keep their last values: 0 after the
        # sleep aborted everything, even with requests queued since.
        running, waiting = (0, 0) if self.sleep_level is not None else (self.running, len(self.queue))
        states = {
            "awake": self.sleep_level is None,
            "weights_offloaded": self.sleep_level == 1,
            "discard_all": self.sleep_level == 2,
        }
        sleep_memory = (
            self.args.sleep_memory if self.args.sleep_memory is not None else self.args.gpu_memory_utilization
        )
        held = self.args.gpu_memory_utilization if self.sleep_level is None else sleep_memory
        lines = [
            "# TYPE fake:gpu_memory_held gauge",
            f'fake:gpu_memory_held{{model_name="{self.model}"}} {float(held)}',
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(running)}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}",
            "# TYPE vllm:engine_sleep_state gauge",
            *(f'vllm:engine_sleep_state{{{labels},sleep_state="{state}"}} {float(on)}' for state, on in states.items()),
            "# TYPE vllm:request_success_total counter",
            *(
                f'vllm:request_success_total{{engine="0",finished_reason="{reason}",model_name="{self.model}"}} '
                f"{float(count)}"
                for reason, count in self.success.items()
            ),
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{labels}}} {float(self.prompt_tokens)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {float(self.generation_tokens)}",
        ]
        return web.Response(
            body=("\n".join(lines) + "\n").encode(),
            headers={"Content-Type": "text/plain; version=1.0.0; charset=utf-8"},
        )

    async def sleep(self, request):
        level = request.query.get("level", "1")
        if level not in ("0", "1", "2"):
            refused = validation_error(
                "less_than_equal", "query.level", "Input should be less than or equal to 2", level, {"le": 2}
            )
            return json_response(refused.body, status=refused.status)
        # vLLM's default pause mode, "abort": every request in the engine ends with finish_reason abort.
        self.end_all("abort")
        if self.sleep_level is None:  # a sleep while asleep keeps the level it fell asleep at
            self.sleep_level = int(level)
        self.asleep_parts = {"weights", "kv_cache"}
        return json_response({"status": "sleeping", "level": int(level)})

    async def wake_up(self, request):
        """Wakes the parts named by `tags` (all without); the engine serves once every part is awake."""
        tags = request.query.getall("tags", []) or None
        remaining = self.asleep_parts - set(tags or self.asleep_parts)
        if self.sleep_level is not None and not remaining:
            if self.args.wake_fail == "hang":
                await self.hang(request)
            if self.args.wake_fail == "crash":
                print(
                    "fake-vllm: RuntimeError: CUDA error: an illegal memory access was encountered (waking)",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)
            await asyncio.sleep(self.args.wake_delay)
            self.wedged = self.args.wake_fail == "wedge"
            self.sleep_level = None
            self.dispatch()
        self.asleep_parts = remaining
        return json_response({"status": "awake" if self.sleep_level is None else "sleeping", "tags": tags})

    async def collective_rpc(self, request):
        try:
            doc = json.loads(await request.read())
        except ValueError as bad:
            return json_response(
                {"error": {"message": f"JSON decode error: {bad}", "type": "Bad Request", "param": None, "code": 400}},
                status=400,
            )
        if not isinstance(doc, dict) or doc.get("method") is None:
            message = (
                "Missing 'method' in request body" if isinstance(doc, dict) else "Request body must be a JSON object"
            )
            return json_response(
                {"error": {"message": message, "type": "Bad Request", "param": None, "code": 400}}, status=400
            )
        if doc["method"] != "reload_weights":  # the only worker method the fake has
            message = (
                f"Call to collective_rpc method failed: Worker failed with error ''Worker' object has no "
                f"attribute '{doc['method']}'', please check the stack trace above for the root cause"
            )
            return json_response(
                {"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}, status=500
            )
        return json_response({"results": [None]})

    async def reset_prefix_cache(self, request):
        # vLLM refuses while running requests hold cache blocks, and says to try again.
        return json_response({"success": self.running == 0})

    async def is_sleeping(self, request):
        return json_response({"is_sleeping": self.sleep_level is not None})

    async def generate(self, request):
        raw = await request.read()
        try:
            return self.stamp(request, raw, await self.serve_model(request, raw))
        except BadRequest as refused:
            return self.stamp(request, raw, json_response(refused.body, status=refused.status))
        finally:
            self.count_served()

    def check(self, doc, chat):
        """vLLM's refusals, as far as the fake can tell without a tokenizer; returns (prompt tokens,
        completion tokens, the natural finish reason)."""
        n = int_field(doc, "n")
        if n is not None and n < 1:
            raise BadRequest(f"n must be at least 1, got {n}.")
        limit_key = "max_completion_tokens" if chat and "max_completion_tokens" in doc else "max_tokens"
        max_tokens = int_field(doc, limit_key)
        if max_tokens is not None and max_tokens < 1:
            raise BadRequest(
                f"max_tokens must be at least 1, got {max_tokens}. (parameter=max_tokens, value={max_tokens})",
                param="max_tokens",
            )
        temperature = doc.get("temperature")
        if isinstance(temperature, (int, float)) and temperature < 0:
            raise BadRequest(
                f"temperature must be non-negative, got {float(temperature)}. "
                f"(parameter=temperature, value={float(temperature)})",
                param="temperature",
            )
        if chat:
            messages = doc.get("messages") if isinstance(doc.get("messages"), list) else []
            prompt = 1 + sum(words(m.get("content")) for m in messages if isinstance(m, dict))
        else:
            prompt = 1 + words(doc.get("prompt"))  # 1: the BOS token
        limit = self.args.max_model_len
        if limit is not None and prompt > limit:
            # vLLM's tokenizer stops counting one token past the limit.
            at_least = min(prompt, limit + 1)
            raise BadRequest(
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"contains at least {at_least} input tokens, which exceeds this limit even without "
                "any output tokens. Please reduce the length of the input prompt. "
                f"(parameter=input_tokens, value={at_least})",
                param="input_tokens",
            )
        if chat and doc.get("tools"):
            self.check_tool_choice(doc.get("tool_choice") or "auto")
        if limit is not None and max_tokens is not None and max_tokens > limit:
            raise BadRequest(
                f"{limit_key}={max_tokens} cannot be greater than max_model_len={limit}. Please request "
                f"fewer output tokens. (parameter={limit_key}, value={max_tokens})",
                param=limit_key,
            )
        if max_tokens is None:
            tokens, finish = (CHAT_NATURAL_LENGTH, "stop") if chat else (COMPLETIONS_DEFAULT_MAX_TOKENS, "length")
        else:
            tokens, finish = max_tokens, "length"
        if limit is not None and tokens > limit - prompt:
            tokens, finish = limit - prompt, "length"  # vLLM caps the output at the context window silently
        return prompt, tokens, finish

    def check_tool_choice(self, choice):
        """vLLM serves tools only with a tool-call parser, and "auto" also needs --enable-auto-tool-choice."""
        if choice == "auto" and not (self.args.enable_auto_tool_choice and self.args.tool_call_parser):
            raise BadRequest('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
        if choice != "none" and not self.args.tool_call_parser:
            named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
            what = f'function "{named}"' if named else f'"{choice}"'
            raise BadRequest(f"tool_choice={what} requires --tool-call-parser to be set")

    async def serve_model(self, request, raw):
        try:
            doc = json.loads(raw)  # as FastAPI reads it: bytes, the encoding guessed (UTF-8, -16 or -32)
        except UnicodeDecodeError:
            raise BadRequest("", body={"detail": "There was an error parsing the body"}) from None
        except json.JSONDecodeError as bad:
            raise validation_error(
                "json_invalid", f"body.{bad.pos}", "JSON decode error", "<dict of 0 items>", {"error": bad.msg}
            ) from None
        if not isinstance(doc, dict):
            raise validation_error(
                "model_attributes_type",
                "body",
                "Input should be a valid dictionary or object to extract fields from",
                doc,
            )
        name = doc.get("model")
        if name and not self.skip_model_check and name not in self.names:
            raise BadRequest(
                f"The model `{name}` does not exist. Valid aliases: {', '.join(self.names)}.",
                kind="NotFoundError",
                param="model",
                status=404,
            )
        if request.path.endswith("/embeddings"):
            return json_response(
                {
                    "object": "list",
                    "model": self.model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                }
            )
        chat = request.path.endswith("/chat/completions")
        prompt, tokens, finish = self.check(doc, chat)
        seq = Seq()
        self.inflight.add(seq)
        self.queue.append(seq)
        self.dispatch()
        try:
            if doc.get("stream"):
                return await self.stream(request, doc, chat, seq, prompt, tokens, finish)
            return await self.complete(request, chat, seq, prompt, tokens, finish)
        finally:
            self.inflight.discard(seq)
            self.release(seq)

    async def tokens(self, request, seq, prompt, count):
        """Yields token numbers at the configured pace until `count`, or until the engine ends the
        request; stops when the client has gone (vLLM aborts such a request without counting it)."""
        await seq.admitted
        for i in range(count):
            if seq.ended:
                return
            client_gone(request)
            if i == 0:
                self.prompt_tokens += prompt
            self.generation_tokens += 1
            yield i
            await seq.tick(1 / self.args.tokens_per_second)

    async def hang(self, request):
        """The real engine after a SIGTERM that killed its core first: nothing more comes, and the
        request ends only when its client leaves."""
        while True:
            client_gone(request)
            await asyncio.sleep(0.1)

    def finished(self, seq, natural, produced, wanted):
        reason = seq.ended if seq.ended and produced < wanted else natural
        self.success[reason] += 1
        return reason

    async def complete(self, request, chat, seq, prompt, tokens, finish):
        produced = [i async for i in self.tokens(request, seq, prompt, tokens)]
        if seq.ended == "hang":
            await self.hang(request)
        if seq.ended == "error" and len(produced) < tokens:
            self.success["error"] += 1
            raise BadRequest(ENGINE_DEAD, kind="InternalServerError", status=500)
        reason = self.finished(seq, finish, len(produced), tokens)
        text = " ".join(f"tok{i}" for i in produced)
        if chat:
            choice = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": None,
                },
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "token_ids": None,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "routed_experts": None,
            }
        body = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": FINGERPRINT,
            "usage": {
                "prompt_tokens": prompt,
                "total_tokens": prompt + len(produced),
                "completion_tokens": len(produced),
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
        }
        if chat:
            body.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
        body.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
        return json_response(body)

    async def stream(self, request, doc, chat, seq, prompt, tokens, finish):
        """vLLM's SSE framing: (chat) a role chunk once the request runs, one chunk per token with the
        finish reason in the last, a usage chunk when stream_options.include_usage, then [DONE]."""
        include_usage = bool((doc.get("stream_options") or {}).get("include_usage"))
        stream_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        head = {
            "id": stream_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": self.model,
        }
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)

        async def send(chunk):
            chunk["sent_at"] = time.time()  # the fake's own: lets tests time each chunk's making
            await response.write(f"data: {json.dumps(chunk, separators=COMPACT)}\n\n".encode())

        def choice(text, reason):
            if chat:
                end = {"stop_reason": None} if reason else {}
                return {
                    "index": 0,
                    "delta": {"content": text},
                    "logprobs": None,
                    "finish_reason": reason,
                    **end,
                    "token_ids": None,
                }
            return {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "prompt_token_ids": None,
                "token_ids": None,
            }

        def last(chunk):
            if not include_usage:  # the fingerprint marks the final message: this one, or the usage chunk
                chunk["system_fingerprint"] = FINGERPRINT
            return chunk

        produced = 0
        async for i in self.tokens(request, seq, prompt, tokens):
            if i == 0 and chat:
                await send(
                    {
                        **head,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                        "prompt_token_ids": None,
                        "prompt_text": None,
                    }
                )
            produced += 1
            reason = finish if produced == tokens else None
            chunk = {**head, "choices": [choice(f"tok{i} ", reason)]}
            await send(last(chunk) if reason else chunk)
        if seq.ended == "hang":
            await self.hang(request)
        if produced < tokens:  # ended early by the engine (sleep or shutdown)
            if seq.ended == "error":
                self.success["error"] += 1
                error = BadRequest(ENGINE_DEAD, kind="InternalServerError", status=500).body
                await response.write(f"data: {json.dumps(error)}\n\n".encode())  # json.dumps's spacing, as vLLM's
                await response.write(b"data: [DONE]\n\n")
                await response.write_eof()
                return response
            if produced == 0 and chat:
                await send(
                    {
                        **head,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                        "prompt_token_ids": None,
                        "prompt_text": None,
                    }
                )
            await send(last({**head, "choices": [choice("", seq.ended)]}))
        self.finished(seq, finish, produced, tokens)
        if include_usage:
            await send(
                {
                    **head,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt,
                        "total_tokens": prompt + produced,
                        "completion_tokens": produced,
                    },
                    "system_fingerprint": FINGERPRINT,
                }
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def not_found(self, request):
        raw = await request.read()
        allowed = self.routes.get(request.path)
        if allowed:  # FastAPI answers a known path with the wrong method so
            response = json_response(
                {"detail": "Method Not Allowed"}, status=405, headers={"Allow": ", ".join(sorted(allowed))}
            )
        else:
            response = json_response({"detail": "Not Found"}, status=404)
        return self.stamp(request, raw, response)

    def application(self):
        app = web.Application(client_max_size=256 * 1024 * 1024)
        routes = [
            ("GET", "/health", self.health),
            ("GET", "/version", self.version),
            ("GET", "/v1/models", self.models),
            ("GET", "/metrics", self.metrics),
            *(("POST", path, self.generate) for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")),
        ]
        # vLLM registers its development routes, sleep mode among them, only with this variable set.
        if env_flag("VLLM_SERVER_DEV_MODE", ("1",)):
            routes += [
                ("POST", "/sleep", self.sleep),
                ("POST", "/wake_up", self.wake_up),
                ("GET", "/is_sleeping", self.is_sleeping),
                ("POST", "/collective_rpc", self.collective_rpc),
                ("POST", "/reset_prefix_cache", self.reset_prefix_cache),
            ]
        self.routes = {}
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            self.routes.setdefault(path, set()).add(method)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        return app

    async def serve(self):
        runner = web.AppRunner(self.application(), access_log=None)
        await runner.setup()
        # A long shutdown timeout: with --on-sigterm hang, requests end only when their clients leave.
        site = web.TCPSite(runner, self.args.host, self.args.port, shutdown_timeout=3600)
        await site.start()
        print(f"fake-vllm: serving {self.model} on port {self.args.port}", file=sys.stderr, flush=True)
        print("INFO:     Application startup complete.", file=sys.stderr, flush=True)  # uvicorn's, in vLLM
        stop = asyncio.Event()
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        print(
            f"fake-vllm: shutting down, requests in flight end with: {self.args.on_sigterm}",
            file=sys.stderr,
            flush=True,
        )
        self.end_all(self.args.on_sigterm)
        await runner.cleanup()  # stops listening, then waits for the requests in flight


def process_age():
    """Seconds since this process started: the interpreter's own start-up is part of the load delay,
    as vLLM's import time is part of its start."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as up:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            uptime = float(up.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


SHARDS = 4  # checkpoint shards the fake "loads": a bar that moves, where the tiny real model has one


def vllm_line(process, source, message):
    """A log line as vLLM writes it: "(Worker pid=38) INFO 11-30 09:32:13 [default_loader.py:501] ..."."""
    pid = {"APIServer": 1, "EngineCore": 25, "Worker": 38}[process]
    return f"({process} pid={pid}) INFO {time.strftime('%m-%d %H:%M:%S')} [{source}] {message}"


def loading_log(args):
    """vLLM 0.32's loading lines (tests/unit/engine_logs/vllm_cpu_start.log has a real start), spread
    over the load delay as (fraction of the delay, line); the shards bar as tqdm prints it."""

    def bar(done):
        return (
            f"Loading safetensors checkpoint shards: {100 * done // SHARDS:3d}% Completed | {done}/{SHARDS} "
            f"[00:0{done}<00:0{SHARDS - done}, 1.00s/it]"
        )

    lines = [
        (
            0.0,
            vllm_line(
                "APIServer",
                "api_utils.py:286",
                f"non-default args: {{'model_tag': '{args.model_path}', 'model': '{args.model_path}'}}",
            ),
        ),
        (0.05, vllm_line("APIServer", "model.py:733", "Resolved architecture: LlamaForCausalLM")),
        (
            0.1,
            vllm_line(
                "EngineCore",
                "core.py:133",
                f"Initializing a V1 LLM engine (v{VERSION}) with config: "
                f"model='{args.model_path}', dtype=torch.bfloat16",
            ),
        ),
        (0.2, vllm_line("Worker", "cpu_model_runner.py:68", f"Starting to load model {args.model_path}...")),
        *((0.25 + 0.1 * done, bar(done)) for done in range(SHARDS + 1)),
        (
            0.7,
            vllm_line("Worker", "default_loader.py:501", f"Loading weights took {0.4 * args.load_delay:.2f} seconds"),
        ),
        (
            0.8,
            vllm_line(
                "EngineCore",
                "kv_cache_utils.py:2327",
                "CPU KV cache size: 2,097,152 tokens, Maximum concurrency for 1,024 tokens per request: 2048.00x",
            ),
        ),
        (
            0.9,
            vllm_line(
                "EngineCore",
                "core.py:402",
                f"init engine (profile, create kv cache, warmup model) took {0.1 * args.load_delay:.2f} s",
            ),
        ),
        (0.95, vllm_line("APIServer", "entry.py:140", f"Starting vLLM server on http://{args.host}:{args.port}")),
    ]
    return lines


HELD = []  # the memory --load-memory took, held for the life of the process

MEMORY_CHUNK_MIB = 16


def take_memory(mib, started, first, last):
    """Takes `mib` MiB evenly from `first` to `last` seconds after `started`, every page written so
    that it is resident (a zeroed allocation would not be)."""
    chunks = max(1, mib // MEMORY_CHUNK_MIB)
    for index in range(chunks):
        time.sleep(max(0.0, started + first + (last - first) * index / chunks - time.monotonic()))
        HELD.append(b"\x01" * (MEMORY_CHUNK_MIB << 20))


def load(args):
    """Prints the loading lines at their times; the interpreter's own start counts, as vLLM's imports do."""
    started = time.monotonic() - process_age()
    if args.load_memory > 0:  # weights and KV cache come in from a fifth of the load to nine tenths
        window = (0.2 * args.load_delay, 0.9 * args.load_delay)
        threading.Thread(target=take_memory, args=(args.load_memory, started, *window), daemon=True).start()
    for fraction, line in loading_log(args):
        time.sleep(max(0.0, started + fraction * args.load_delay - time.monotonic()))
        if args.fail == "exit_during_load" and fraction >= 0.5:
            print("fake-vllm: RuntimeError: CUDA out of memory while loading weights", file=sys.stderr, flush=True)
            sys.exit(args.exit_code)
        print(line, file=sys.stderr, flush=True)
    time.sleep(max(0.0, started + args.load_delay - time.monotonic()))


def main():
    args = parse_args(sys.argv[1:])
    print(f"fake-vllm {INSTANCE}: loading model {args.model_path} ({args.load_delay}s)", file=sys.stderr, flush=True)
    load(args)
    asyncio.run(Fake(args).serve())


if __name__ == "__main__":
    main()
