"""Reading config values: parsers for single values (each returns the typed value or raises
ValueError saying what was expected), the table reader that records problems instead of stopping at
the first, and secrets given inline or in files."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from waker.config.units import parse_duration, parse_size

MODEL_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}"

    def reachable(self) -> Address:
        """Where a client on this host (or network namespace) reaches a server listening here: a
        wildcard address is reached on loopback."""
        return Address(_LOOPBACK_OF_WILDCARD.get(self.host, self.host), self.port)


_LOOPBACK_OF_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True, slots=True)
class Source:
    """Where a catalogue entry's recipe comes from: a file of a repository at a commit."""

    repo: str
    commit: str
    file: str

    def __str__(self) -> str:
        return f"{self.repo} {self.commit} {self.file}"


# vLLM's flag naming the names it serves (it takes several); the waker adds the model's id and aliases.
SERVED_NAME_FLAG = "--served-model-name"

E = TypeVar("E", bound=StrEnum)


def served_names_index(command: tuple[str, ...]) -> int | None:
    """Where vLLM's --served-model-name is in `command` (either form), if it is."""
    return next(
        (i for i, word in enumerate(command) if word == SERVED_NAME_FLAG or word.startswith(SERVED_NAME_FLAG + "=")),
        None,
    )


# The quick picker's use cases, in the order docs/models.md shows them.
PICKS = ("chat", "reasoning", "coding", "opencode", "vision", "ocr", "european", "utility")


def option(command: tuple[str, ...], *names: str) -> str | None:
    """The value of the first of `names` in `command`, as `--name value` or `--name=value`."""
    for i, arg in enumerate(command):
        for name in names:
            if arg == name and i + 1 < len(command):
                return command[i + 1]
            if arg.startswith(name + "="):
                return arg.partition("=")[2]
    return None


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type_name(value)}")
    return value


def secret(value: Any) -> str:
    """A string in which "${NAME}" is replaced by the environment variable NAME, which must be set."""
    text = string(value)

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", expand, text)


def api_key(value: Any) -> str:
    """A client API key ("${ENV}" allowed): 8 or more characters that need no quoting anywhere."""
    key = secret(value)
    if not re.fullmatch(r"[A-Za-z0-9._~+/=:-]{8,512}", key):
        raise ValueError(
            "an API key must be 8 to 512 characters of A-Z a-z 0-9 . _ ~ + / = : - "
            f"(got {len(key)} characters{', with others' if len(key) >= 8 else ''})"
        )
    return key


def origin(value: Any) -> str:
    """A CORS origin such as "http://localhost:3000", or a prefix ending in "*" ("vscode-webview://*")."""
    text = string(value)
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*://[A-Za-z0-9.:\[\]-]*\*?", text) or text.endswith("/"):
        raise ValueError(f'expected an origin such as "http://localhost:3000" or "vscode-webview://*", got {text!r}')
    return text


def model_id(value: Any) -> str:
    text = string(value)
    if not MODEL_ID.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid name: use 1 to 128 of the characters A-Z a-z 0-9 . _ : -")
    return text


def stack_name(value: Any) -> str:
    text = string(value)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,30}", text):
        raise ValueError(f"{text!r} is not a valid name: 1 to 31 of a-z 0-9 _ . -, starting with a letter or digit")
    return text


def list_of(item: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def parse(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(f"expected an array, got {type_name(value)}")
        return [item(v) for v in value]

    return parse


def tuple_or_none(value: list[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number between 1 and 65535, got {value!r}")
    return value


def address(value: Any) -> Address:
    text = string(value)
    match = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d+)", text)
    if not match:
        raise ValueError(f'expected HOST:PORT such as "127.0.0.1:8009", got {text!r}')
    host = match.group(1) or match.group(2) or "0.0.0.0"
    return Address(host, port(int(match.group(3))))


def ipv4(value: Any) -> str:
    text = string(value)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f'expected an IPv4 address such as "172.30.92.128", got {text!r}') from None


def docker_network(value: Any) -> str:
    text = string(value)
    if text and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise ValueError(f"expected a Docker network name (letters, digits, '_', '.', '-'), got {text!r}")
    return text


def http_path(value: Any) -> str:
    text = string(value)
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise ValueError(f"expected an HTTP path starting with '/', got {text!r}")
    return text


def env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f'expected a table of NAME = "value", got {type_name(value)}')
    for key, item in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise ValueError(f"variable {key!r}: expected a string, got {type_name(item)}")
    return {key: str(item) for key, item in value.items()}


def volume(value: Any) -> str:
    text = string(value)
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise ValueError(f'expected "HOST_PATH_OR_VOLUME:/container/path[:ro]", got {text!r}')
    if len(parts) == 3 and not set(parts[2].split(",")) <= {"ro", "rw", "z", "Z", "shared", "slave", "private"}:
        raise ValueError(f"unknown volume option {parts[2]!r} in {text!r}")
    return text


def resolve_volume(volume: str, config_dir: Path) -> str:
    """Relative host paths are relative to the config file, as in compose files."""
    source, rest = volume.split(":", 1)
    if source.startswith((".", "~")):
        source = str((config_dir / Path(source).expanduser()).resolve())
    return f"{source}:{rest}"


def gpus(value: Any) -> str:
    text = string(value).strip()
    if text and text != "all" and not re.fullmatch(r"\d+(,\d+)*", text):
        raise ValueError(f'expected "all", a list of device indexes such as "0,1", or "", got {text!r}')
    return text


def fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"expected a fraction of the GPU in (0, 1], such as 0.5, got {value!r}")
    return float(value)


def ulimits(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table such as {{ memlock = -1 }}, got {type_name(value)}")
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"ulimit {key!r}: expected an integer (-1 for unlimited), got {item!r}")
    return dict(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def capacity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a positive number (1.0 = the whole GPU), got {value!r}")
    return float(value)


def memory_floor(value: Any) -> int:
    """A size of memory to keep free ("8GiB", "512MiB", bytes), or 0: no floor."""
    if value == 0 and not isinstance(value, bool) or value == "0":
        return 0
    return parse_size(value)


def source(value: Any) -> Source:
    """{ repo = URL, commit = hex, file = path in the repository }, all three required."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a table {{ repo = ..., commit = ..., file = ... }}, got {type_name(value)}")
    unknown = set(value) - {"repo", "commit", "file"}
    missing = {"repo", "commit", "file"} - set(value)
    if unknown or missing:
        raise ValueError(
            f"expected exactly the keys repo, commit and file"
            f"{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}"
            f"{'; missing: ' + ', '.join(sorted(missing)) if missing else ''}"
        )
    repo, commit, file = string(value["repo"]), string(value["commit"]), string(value["file"])
    if not re.fullmatch(r"https://[A-Za-z0-9.-]+/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
        raise ValueError(f'repo: expected a repository URL such as "https://github.com/owner/name", got {repo!r}')
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise ValueError(f"commit: expected 7 to 40 lowercase hex digits, got {commit!r}")
    if not file or file.startswith("/") or ".." in file.split("/"):
        raise ValueError(f"file: expected a path inside the repository, got {file!r}")
    return Source(repo, commit, file)


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(repr(o) for o in options)}, got {value!r}")
        return value

    return parse


def member(kind: type[E]) -> Callable[[Any], E]:
    """The parser of one of a closed set of words: the enum's member (its default, given as the member
    itself, is taken as it is)."""
    words = choice(*(m.value for m in kind))

    def parse(value: Any) -> E:
        return kind(words(value))

    return parse


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, got {value!r}")
    return seconds


def type_name(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class Table:
    """Reads typed fields from one TOML table, recording problems instead of stopping at the first."""

    def __init__(self, raw: Any, key: str | None, where: str, problems: list[str]) -> None:
        table = raw.get(key, {}) if key is not None else raw
        if not isinstance(table, dict):
            problems.append(f"{where} must be a table")
            table = {}
        self.table, self.where, self.problems = table, where, problems
        self.seen: set[str] = set()

    def get(self, key: str, parse: Callable[[Any], Any], default: Any = None, required: bool = False) -> Any:
        """The parsed value, or the default (parsed when it is text) when absent or wrong."""
        self.seen.add(key)
        if key in self.table:
            try:
                return parse(self.table[key])
            except ValueError as exc:
                self.problems.append(f"{self.where}: field '{key}': {exc}")
        elif required:
            self.problems.append(f"{self.where}: field '{key}' is required")
        return parse(default) if isinstance(default, str) else default

    def reject_unknown(self, allowed: set[str] | None = None) -> None:
        allowed = allowed if allowed is not None else self.seen
        for key in self.table:
            if key not in allowed:
                self.problems.append(
                    f"{self.where}: unknown field '{key}'; the fields are {', '.join(sorted(allowed))}"
                )


def secret_field(table: Table, key: str, path: Path) -> str:
    """A secret given inline (`key`, "${ENV}" allowed) or in a file (`key_file`, first line)."""
    inline = table.get(key, secret, "")
    from_file = secret_file_field(table, f"{key}_file", path, secret)
    if inline and from_file:
        table.problems.append(f"{table.where}: set '{key}' or '{key}_file', not both")
    return inline or (from_file[0] if from_file else "")


def secret_file_field(table: Table, key: str, path: Path, parse: Callable[[Any], str]) -> list[str]:
    """The secrets in the file named by `key`: one a line, "#" comments and blank lines skipped,
    "${ENV}" allowed. A relative name is relative to the config file."""
    file_name = table.get(key, string, "")
    if not file_name:
        return []
    source = path.parent / file_name
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        table.problems.append(f"{table.where}: field '{key}': cannot read {source}: {exc.strerror or exc}")
        return []
    secrets = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                secrets.append(parse(line))
            except ValueError as exc:
                table.problems.append(f"{table.where}: field '{key}': {source} line {number}: {exc}")
    if not secrets:
        table.problems.append(f"{table.where}: field '{key}': {source} holds no secret")
    return secrets
