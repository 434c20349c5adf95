"""Errors clients and operators get: the domain errors, and OpenAI-shaped bodies for them (no
aiohttp here: `waker check` and the nginx config use these bodies; the responses are in http_errors)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any


def error_body(message: str, code: str, status: int, details: dict[str, Any] | None = None) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code, **(details or {})}}


class RequestRefused(Exception):
    """What a waiting request gets instead of the model: an HTTP status, code, message, details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
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


class SleepStep(StrEnum):
    """The steps of vLLM's sleep protocol, as the waker takes them (waker/engine/sleep.py)."""

    SLEEP = "sleep"  # POST /sleep?level=N
    CHECK_ASLEEP = "check_asleep"  # GET /is_sleeping: true
    WAKE = "wake"  # POST /wake_up (level 1)
    WAKE_WEIGHTS = "wake_weights"  # POST /wake_up?tags=weights (level 2)
    RELOAD_WEIGHTS = "reload_weights"  # POST /collective_rpc {"method": "reload_weights"} (level 2)
    WAKE_KV_CACHE = "wake_kv_cache"  # POST /wake_up?tags=kv_cache (level 2)
    RESET_PREFIX_CACHE = "reset_prefix_cache"  # POST /reset_prefix_cache (level 2)
    CHECK_AWAKE = "check_awake"  # GET /is_sleeping: false
    CHECK_SERVES = "check_serves"  # a one-token completion answered (/health stays 200 on a wedged engine)


class SleepModeError(Exception):
    """A sleep or a wake that did not go as vLLM's protocol says: the step, what was seen, and
    whether it was a timeout (the engine stopped answering). The waker stops such a model and, for a
    wake, starts it cold."""

    def __init__(self, step: SleepStep, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.step, self.message, self.timed_out = step, message, timed_out


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason, each a complete sentence."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


class IllegalTransition(ValueError):
    pass


class DriverError(Exception):
    """An engine could not do what the shell asked (a stop, a log, a listing): the message says what and,
    where it can, what to do. The shell retries a failed stop."""


class DockerError(DriverError):
    """A Docker call failed; the message says what and, where it can, what to do."""


class ImageMissing(DockerError):
    """The image is not on the engine, and its pull policy says not to pull it."""


class ImagePullFailed(DockerError):
    """The registry or the engine refused the pull."""


class NotManaged(DockerError):
    """A call named a container the waker did not create: refused."""


class PullFailed(Exception):
    """The registry or the engine refused the pull; the message is theirs."""


class NginxError(Exception):
    """nginx refused its config, a reload or a signal, or exited; the message is what it said."""


class ProxyRefused(Exception):
    """The Docker socket proxy refuses a call: not one the waker makes, or not on what it may touch. The
    message names the call and why; the caller gets it in a 403."""


class WeightsError(Exception):
    """Weights that could not be fetched: `code` and `status` as a waiting request gets them, and a
    message that says what to do."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
