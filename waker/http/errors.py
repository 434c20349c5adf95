"""OpenAI-shaped error responses for the aiohttp handlers (the bodies themselves: waker/errors.py)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from waker.errors import error_body


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, details: dict[str, Any] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(error_body(message, code, status, details)),
        content_type="application/json",
        headers=headers,
    )
