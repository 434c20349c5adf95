"""Errors clients and operators get: the domain errors, and OpenAI-shaped bodies for them (no
aiohttp here: `waker check` and the nginx config use these bodies; the responses are in http_errors)."""

from __future__ import annotations

from typing import Any


def error_body(message: str, code: str, status: int, details: dict[str, Any] | None = None) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code, **(details or {})}}


class RequestRefused(Exception):
    """What a waiting request gets instead of the model: an HTTP status, code, message, details."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after, self.details = retry_after, details or {}

    def headers(self) -> dict[str, str]:
        """Retry-After when a retry may succeed later, and X-Busy-Model naming the models that hold the GPU."""
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        holders = self.details.get("holders")
        if holders:
            headers["X-Busy-Model"] = ",".join(h["model"] for h in holders)
        return headers


class StartError(Exception):
    """A model could not be made ready (or its run ended in a crash); carries the HTTP status and the
    error code clients get."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AdminError(Exception):
    """A manual operation that cannot be done now; carries the HTTP status for the admin API."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
