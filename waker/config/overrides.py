"""`--set section.key=value` overrides of deployment settings, applied to the raw TOML before parsing."""

from __future__ import annotations

import os
import tomllib
from typing import Any

OVERRIDABLE = ("gateway", "waker", "scheduler")


def overrides_or_env(given: list[str]) -> tuple[str, ...]:
    """--set values, else $WAKER_SET (space-separated): a container deployment sets them once for
    every command, so `docker compose exec gateway waker status` sees the config the waker runs."""
    return tuple(given or os.environ.get("WAKER_SET", "").split())


def apply_override(raw: dict[str, Any], override: str, problems: list[str]) -> None:
    """`section.key=value` replaces one deployment setting, so that a container deployment can adapt
    the same file (listen addresses, network) without a copy of it. The value is read as TOML when it
    parses as a TOML value, else taken as a string: `gateway.allow_no_keys=true`, `waker.network=models`."""
    name, sep, value = override.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        problems.append(f"--set {override!r}: expected SECTION.KEY=VALUE, such as gateway.listen=0.0.0.0:8009")
        return
    if section not in OVERRIDABLE:
        problems.append(
            f"--set {override!r}: only {', '.join(OVERRIDABLE)} settings can be set this way; "
            "models are declared in the file"
        )
        return
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    table = raw.setdefault(section, {})
    if isinstance(table, dict):
        table[key] = parsed
