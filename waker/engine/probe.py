"""A model server's own health and load, over its HTTP API: what the shell asks of a running engine
besides sleep mode (`engine.sleep`)."""

from __future__ import annotations

import re

import aiohttp

from waker.errors import DriverError

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
    does not say (no such page, no such gauge). Asked before an idle stop or sleep, as a check on the
    gateway's own count. vLLM's API server answers /metrics slowly while it streams (seconds on a
    loaded CPU), hence a longer wait than a health check's; no answer raises DriverError, and the
    shell asks again (`core.incidents.idle_check`)."""
    url = f"{base_url}/metrics"
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=METRICS_TIMEOUT)) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except TimeoutError:
        raise DriverError(f"{url} did not answer within {METRICS_TIMEOUT:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise DriverError(f"{url} did not answer: {exc!r}") from None
    values = [float(v) for v in _RUNNING_METRIC.findall(text)]
    return int(sum(values)) if values else None
