"""A model server's own health and load, over its HTTP API: what the shell asks of a running engine
besides sleep mode (`engine.sleep`)."""

from __future__ import annotations

import re

import aiohttp

METRICS_TIMEOUT = 10.0  # off the request path: an idle stop can wait for a loaded server's answer
_RUNNING_METRIC = re.compile(r"^vllm:num_requests_(?:running|waiting)(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.M)


async def healthy(http: aiohttp.ClientSession, url: str) -> bool:
    """Whether the health check at `url` answers 200 (within the session's timeout)."""
    try:
        async with http.get(url) as response:
            return response.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def busy(http: aiohttp.ClientSession, base_url: str) -> int | None:
    """Requests the model server itself reports running or waiting (vLLM's /metrics), or None when it
    does not say. Asked once before an idle stop, as a check on the gateway's own count. vLLM's API
    server answers /metrics slowly while it streams (seconds on a loaded CPU), hence a longer wait
    than a health check's; one that never answers (wedged) does not keep its model up."""
    try:
        async with http.get(f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=METRICS_TIMEOUT)) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
    values = [float(v) for v in _RUNNING_METRIC.findall(text)]
    return int(sum(values)) if values else None
