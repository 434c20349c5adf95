"""Load and soak, through the gateway against fake models (results: docs/reliability.md).

python -m bench.load streams [--concurrency 500] [--seconds 60]
    holds N streaming requests open for the whole duration: every one must finish whole.
python -m bench.load soak [--minutes 10] [--swap-every 3]
    two models that cannot run together, asked for in turn: every request must be answered,
    and the waker's memory must stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import urllib.request

import aiohttp

from bench.common import admin, fake_model, start_stack
from bench.footprint import _rss_mb

TOKENS_PER_SECOND = 5


async def _stream(session: aiohttp.ClientSession, url: str, tokens: int) -> str | None:
    """None when the stream arrived whole, else what went wrong."""
    body = {"model": "streamer", "prompt": "x", "stream": True, "max_tokens": tokens}
    chunks, done = 0, False
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                return f"HTTP {response.status}"
            async for line in response.content:
                chunks += line.startswith(b"data: {")
                done = done or line.startswith(b"data: [DONE]")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return repr(exc)
    return None if done and chunks == tokens else f"incomplete: {chunks}/{tokens} chunks, done={done}"


def streams(concurrency: int, seconds: float) -> int:
    stack = start_stack([fake_model("streamer", load_delay=0.2, extra=["--tokens-per-second", str(TOKENS_PER_SECOND)])])
    try:
        admin(stack, "POST", "/admin/models/streamer/start")
        tokens = int(seconds * TOKENS_PER_SECOND)

        async def run() -> list[str | None]:
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=seconds * 3 + 60)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                url = f"{stack.url}/v1/completions"
                return await asyncio.gather(*(_stream(session, url, tokens) for _ in range(concurrency)))

        began = time.monotonic()
        results = asyncio.run(run())
        elapsed = time.monotonic() - began
        errors = [r for r in results if r is not None]
        print(
            f"streams: {concurrency} concurrent streams of {tokens} chunks ({seconds:g} s each) in "
            f"{elapsed:.1f} s: {len(results) - len(errors)} whole, {len(errors)} errors; "
            f"waker RSS {_rss_mb(stack.proc.pid):.1f} MB"
        )
        for error in errors[:5]:
            print(f"  {error}")
        return 1 if errors else 0
    finally:
        stack.stop()


def _starts(stack) -> int:
    """Model starts, from the waker's own counters (Docker keeps too short an event history for a soak)."""
    with urllib.request.urlopen(f"{stack.waker_url}/metrics") as response:
        text = response.read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines() if line.startswith("waker_model_starts_total{")
    )


def soak(minutes: float, swap_every: float) -> int:
    models = [fake_model("a", load_delay=0.5, gpu_memory=0.6), fake_model("b", load_delay=0.5, gpu_memory=0.6)]
    stack = start_stack(models, scheduler={"min_uptime": "0s", "stop_timeout": "5s"})
    try:

        async def run() -> tuple[int, list[str], list[float]]:
            served, errors, rss = 0, [], []
            deadline = time.monotonic() + minutes * 60
            turn, last_sample = 0, 0.0
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
                while time.monotonic() < deadline:
                    model = "ab"[turn % 2]
                    phase_end = time.monotonic() + swap_every
                    while time.monotonic() < phase_end:  # a few clients on one model, then the other
                        replies = await asyncio.gather(
                            *(
                                session.post(
                                    f"{stack.url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 4}
                                )
                                for _ in range(4)
                            ),
                            return_exceptions=True,
                        )
                        for reply in replies:
                            if isinstance(reply, BaseException):
                                errors.append(repr(reply))
                                continue
                            async with reply:
                                await reply.read()
                                if reply.status == 200:
                                    served += 1
                                else:
                                    errors.append(f"HTTP {reply.status}")
                        if time.monotonic() - last_sample > 5:
                            rss.append(_rss_mb(stack.proc.pid))
                            last_sample = time.monotonic()
                    turn += 1
            return served, errors, rss

        served, errors, rss = asyncio.run(run())
        starts = _starts(stack)
        first = statistics.mean(rss[: max(1, len(rss) // 4)])
        last = statistics.mean(rss[-max(1, len(rss) // 4) :])
        print(
            f"soak: {minutes:g} min, a swap every {swap_every:g} s: {served} requests answered, "
            f"{len(errors)} lost, {starts} container starts; waker RSS {first:.1f} MB (first quarter) -> "
            f"{last:.1f} MB (last quarter), max {max(rss):.1f} MB"
        )
        for error in errors[:5]:
            print(f"  {error}")
        return 1 if errors or last > first * 1.2 + 2 else 0
    finally:
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("streams")
    s.add_argument("--concurrency", type=int, default=500)
    s.add_argument("--seconds", type=float, default=60)
    k = sub.add_parser("soak")
    k.add_argument("--minutes", type=float, default=10)
    k.add_argument("--swap-every", type=float, default=3)
    args = parser.parse_args()
    if args.command == "streams":
        return streams(args.concurrency, args.seconds)
    return soak(args.minutes, args.swap_every)


if __name__ == "__main__":
    sys.exit(main())
