"""Registry credentials as `docker login` left them on this host, for the pulls the waker makes.

The Docker engine keeps no credentials: its clients send them with each pull. The waker is such a
client, so it reads the Docker client's own configuration (`$DOCKER_CONFIG/config.json`, else
`~/.docker/config.json`): inline `auths`, then a credential helper (`credHelpers`, `credsStore`).
Nothing about registries goes into the waker's config file.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("waker.docker.registry_auth")

DOCKER_HUB = "docker.io"
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


def registry_of(image: str) -> str:
    """The registry host of an image reference, as Docker reads it: the first path component when it
    looks like a host (has a dot or a port, or is localhost), else Docker Hub."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def credentials(image: str, path: Path | None = None) -> dict[str, str] | None:
    """X-Registry-Auth content for pulling `image`, or None to pull anonymously."""
    path = path or config_path()
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("docker_config_unreadable", path=str(path), error=str(exc))
        return None
    registry = registry_of(image)
    keys = _HUB_KEYS if registry == DOCKER_HUB else (registry, f"https://{registry}", f"http://{registry}")
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    for key in keys:
        entry = (config.get("auths") or {}).get(key) or {}
        if entry.get("auth"):
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError as exc:  # binascii.Error, UnicodeDecodeError: the start would fail as a crash
                error = f"the 'auth' of {key} is not base64 of user:password ({exc})"
                log.warning("docker_config_unreadable", path=str(path), error=error)
                return None
            return {"username": username, "password": password, "serveraddress": key}
        if entry.get("identitytoken"):
            return {"identitytoken": entry["identitytoken"], "serveraddress": key}
    return _from_helper(helper, keys[0]) if helper else None


def _from_helper(helper: str, server: str) -> dict[str, str] | None:
    """Asks `docker-credential-<helper>`, as the Docker CLI does."""
    try:
        done = subprocess.run(
            [f"docker-credential-{helper}", "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("credential_helper_failed", helper=helper, error=str(exc))
        return None
    if done.returncode != 0:  # "credentials not found" is how a helper says: none for this registry
        return None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        log.warning("credential_helper_failed", helper=helper, error="its answer is not JSON")
        return None
    if answer.get("Username") == "<token>":
        return {"identitytoken": answer.get("Secret", ""), "serveraddress": server}
    return {"username": answer.get("Username", ""), "password": answer.get("Secret", ""), "serveraddress": server}
