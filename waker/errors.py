"""OpenAI-shaped error bodies: what every client of the gateway gets instead of a bare status."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def error_body(message: str, code: str, status: int, details: dict[str, Any] | None = None) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code, **(details or {})}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   details: dict[str, Any] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(error_body(message, code, status, details)),
        content_type="application/json",
        headers=headers,
    )
