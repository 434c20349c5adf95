"""OpenAI-shaped error bodies: what every client of the gateway gets instead of a bare status."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def error_body(message: str, code: str, status: int) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(error_body(message, code, status)),
        content_type="application/json",
        headers=headers,
    )
