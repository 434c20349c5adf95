"""Human units in the config: durations ("90s", "15m", "1h30m", 42) and sizes ("16g", "512m")."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)i?b?")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as "90s", "15m", "1h30m", "0".

    Raises ValueError with a message a user can act on.
    """
    if isinstance(value, bool):
        raise ValueError(f'expected a duration such as "90s", "15m" or "1h", got {value!r}')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value.strip().lower())
    else:
        raise ValueError(f'expected a duration such as "90s", "15m" or "1h", got {value!r}')
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"a duration must be zero or positive and finite, got {value!r}")
    return seconds


def _parse_duration_text(text: str) -> float:
    if text.startswith("-"):
        raise ValueError(f"a duration must be zero or positive, got {text!r}")
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f'expected a duration such as "90s", "15m", "1h30m" or plain seconds, got {text!r}')
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact text for a duration, the inverse of parse_duration."""
    if seconds == 0:
        return "0s"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def parse_size(value: object) -> int:
    """Bytes from an integer or a Docker-style size such as "16g", "512m", "64k"."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size such as "16g" or "512m", got {value!r}')
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if not match:
            raise ValueError(f'expected a size such as "16g", "512m" or a number of bytes, got {value!r}')
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    else:
        raise ValueError(f'expected a size such as "16g" or "512m", got {value!r}')
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


def format_size(size: int) -> str:
    for unit in ("t", "g", "m", "k"):
        if size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


def format_bytes(size: int) -> str:
    """A byte count for people, to one decimal ("4.0 kB", "1.2 GB"); not a config value."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
