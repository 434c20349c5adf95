"""A fake vLLM OpenAI server for tests: vLLM's HTTP surface, its load behaviour, and failure modes.

Like vLLM it does not listen until loading is over (`--load-delay`). Failure modes (`--fail`):
  exit_during_load   print a few log lines and exit with --exit-code instead of listening
  never_healthy      listen, but /health answers 503 forever
  crash_after:N      exit abruptly after serving N model requests
Every response carries x-fake-* headers describing the request as received (method, path, body
length and SHA-256), so tests can prove that bytes arrived intact. Runs on aiohttp 3.8 (Debian 12).
"""

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import uuid

from aiohttp import web

INSTANCE = uuid.uuid4().hex[:12]


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="serve")
    parser.add_argument("model_path", nargs="?", default="fake/model")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--load-delay", type=float, default=float(os.environ.get("FAKE_LOAD_DELAY", "0")))
    parser.add_argument("--tokens-per-second", type=float, default=float(os.environ.get("FAKE_TPS", "1000")))
    parser.add_argument("--fail", default=os.environ.get("FAKE_FAIL", ""))
    parser.add_argument("--exit-code", type=int, default=int(os.environ.get("FAKE_EXIT_CODE", "3")))
    args, _unknown = parser.parse_known_args(argv)  # real vLLM flags are accepted and ignored
    return args


class Fake:
    def __init__(self, args):
        self.args = args
        self.model = args.served_model_name or args.model_path
        self.running = 0
        self.served = 0
        self.crash_after = int(args.fail.split(":")[1]) if args.fail.startswith("crash_after:") else None

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

    async def health(self, request):
        if self.args.fail == "never_healthy":
            return web.Response(status=503)
        return web.Response(status=200)

    async def models(self, request):
        body = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "vllm",
                                            "max_model_len": 8192}]}
        return self.stamp(request, b"", web.json_response(body))

    async def metrics(self, request):
        text = ("# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{model_name="{self.model}"}} {self.running}\n'
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{model_name="{self.model}"}} 0\n')
        return web.Response(text=text, content_type="text/plain")

    async def generate(self, request):
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            return self.stamp(request, raw, web.json_response(
                {"error": {"message": "body is not JSON", "type": "BadRequestError", "code": 400}}, status=400))
        self.running += 1
        try:
            if request.path.endswith("/embeddings"):
                return self.stamp(request, raw, web.json_response({
                    "object": "list", "model": self.model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
            chat = request.path.endswith("/chat/completions")
            tokens = int(doc.get("max_tokens") or 8)
            if doc.get("stream"):
                return await self.stream(request, raw, chat, tokens)
            await asyncio.sleep(tokens / self.args.tokens_per_second)
            text = " ".join(f"tok{i}" for i in range(tokens))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            return self.stamp(request, raw, web.json_response({
                "id": f"cmpl-{uuid.uuid4().hex}", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.model, "choices": [choice],
                "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": tokens,
                          "total_tokens": len(raw) // 4 + tokens}}))
        finally:
            self.running -= 1
            self.count_served()

    async def stream(self, request, raw, chat, tokens):
        response = self.stamp(request, raw, web.StreamResponse())
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for i in range(tokens):
            delta = {"index": 0, "delta": {"content": f"tok{i} "}} if chat else {"index": 0, "text": f"tok{i} "}
            chunk = {"id": "chunk", "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": int(time.time()), "model": self.model, "choices": [delta],
                     "sent_at": time.time()}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(1 / self.args.tokens_per_second)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def not_found(self, request):
        raw = await request.read()
        return self.stamp(request, raw, web.json_response(
            {"error": {"message": f"no route {request.path}", "type": "NotFoundError", "code": 404}}, status=404))


def process_age():
    """Seconds since this process started: the interpreter's own start-up is part of the load delay,
    as vLLM's import time is part of its start."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def main():
    args = parse_args(sys.argv[1:])
    print(f"fake-vllm {INSTANCE}: loading model {args.model_path} ({args.load_delay}s)", file=sys.stderr, flush=True)
    time.sleep(max(0.0, args.load_delay - process_age()))
    if args.fail == "exit_during_load":
        print("fake-vllm: RuntimeError: CUDA out of memory while loading weights", file=sys.stderr, flush=True)
        sys.exit(args.exit_code)
    fake = Fake(args)
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/health", fake.health)
    app.router.add_get("/v1/models", fake.models)
    app.router.add_get("/metrics", fake.metrics)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, fake.generate)
    app.router.add_route("*", "/{tail:.*}", fake.not_found)
    print(f"fake-vllm: serving {fake.model} on port {args.port}", file=sys.stderr, flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
