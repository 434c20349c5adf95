"""2. Streaming: tokens/s and inter-chunk latency through the gateway against direct, for 1 and
100 concurrent streams."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp

from bench.common import Row, Section, admin, container_ip, fake_model, percentile, start_stack

TOKENS_PER_SECOND = 50


async def _stream(session: aiohttp.ClientSession, url: str, body: dict) -> list[float]:
    arrivals = []
    async with session.post(url, json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic())
    return arrivals


async def _measure(url: str, body: dict, streams: int) -> tuple[float, float, float]:
    """Aggregate tokens/s, mean and p99 gap between chunks (ms)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        began = time.monotonic()
        runs = await asyncio.gather(*(_stream(session, url, body) for _ in range(streams)))
        elapsed = time.monotonic() - began
    gaps = [(b - a) * 1000 for arrivals in runs for a, b in itertools.pairwise(arrivals)]
    tokens = sum(len(a) for a in runs)
    return tokens / elapsed, sum(gaps) / len(gaps), percentile(gaps, 99)


def run(quick: bool) -> Section:
    tokens = 40 if quick else 200
    stack = start_stack([fake_model("stream", load_delay=0.1, extra=["--tokens-per-second", str(TOKENS_PER_SECOND)])])
    section = Section(f"2. Streaming: {tokens} tokens per stream at {TOKENS_PER_SECOND} tokens/s from the model")
    try:
        admin(stack, "POST", "/admin/models/stream/start")
        body = {"model": "stream", "prompt": "x", "stream": True, "max_tokens": tokens}
        direct = f"http://{container_ip(stack, 'stream')}:8000/v1/completions"
        gateway = f"{stack.url}/v1/completions"
        for streams in (1, 100):
            d = asyncio.run(_measure(direct, body, streams))
            g = asyncio.run(_measure(gateway, body, streams))
            ratio = g[0] / d[0]
            for label, (rate, gap, p99) in (("direct", d), ("gateway", g)):
                section.rows.append(
                    Row(
                        f"{streams} stream(s), {label}", f"{rate:.0f} tokens/s, gap mean {gap:.1f} ms, p99 {p99:.1f} ms"
                    )
                )
            section.rows.append(
                Row(f"{streams} stream(s), gateway / direct tokens/s", f"{ratio:.3f}", ">= 0.97", ratio >= 0.97)
            )
    finally:
        stack.stop()
    return section
