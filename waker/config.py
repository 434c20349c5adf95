"""The typed, immutable configuration, read from `config/models.toml` and validated at the boundary.

Everything inside the waker trusts these objects; every problem found here is reported at once, each
naming the file, the model and the field, so that one `waker check` run shows the whole list.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from waker.units import parse_duration, parse_size

MODEL_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# First path segments of the OpenAI and vLLM routes: a model named like one would shadow the route
# in path routing (/v1/<model>/...), so such ids are refused.
RESERVED_NAMES = frozenset({
    "audio", "batches", "chat", "classify", "completions", "detokenize", "embeddings", "files",
    "fine_tuning", "images", "invocations", "load", "messages", "models", "moderations", "pooling",
    "rerank", "responses", "score", "tokenize", "uploads", "vector_stores",
})

DEFAULT_CONFIG_PATH = Path("config/models.toml")


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason, each a complete sentence."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: Address
    max_body: int
    read_timeout: float
    nginx: str
    njs_module: str


@dataclass(frozen=True, slots=True)
class WakerConfig:
    listen: Address
    docker_host: str
    name: str
    model_port_base: int
    runtime_dir: Path


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    start_timeout: float
    stop_timeout: float
    idle_timeout: float
    min_uptime: float
    gpu_capacity: float
    on_busy: str
    queue_timeout: float
    max_start_failures: int
    start_backoff: float


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    aliases: tuple[str, ...]
    image: str
    command: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    port: int
    health: str
    env: tuple[tuple[str, str], ...]
    volumes: tuple[str, ...]
    gpus: str
    gpu_memory: float
    shm_size: int | None
    ulimits: tuple[tuple[str, int], ...]
    host_port: int
    exclusive: bool
    keep_warm: bool
    start_timeout: float
    stop_timeout: float
    idle_timeout: float
    min_uptime: float

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    gateway: GatewayConfig
    waker: WakerConfig
    scheduler: SchedulerConfig
    models: tuple[ModelConfig, ...]

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)

    def resolve(self, name: str) -> ModelConfig | None:
        """The model a client means by an id or an alias."""
        return next((m for m in self.models if name in m.names), None)


def load_config(path: Path | str | None = None) -> Config:
    path = Path(path or os.environ.get("WAKER_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"{path}: the config file is not valid UTF-8 ({exc.reason})"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    problems: list[str] = []
    known = {"gateway", "waker", "scheduler", "defaults", "model"}
    for key in raw:
        if key not in known:
            problems.append(f"{path}: unknown section [{key}]; the sections are {', '.join(sorted(known))}")
    gateway = _Table(raw, "gateway", path, f"{path}: [gateway]", problems)
    waker = _Table(raw, "waker", path, f"{path}: [waker]", problems)
    scheduler = _Table(raw, "scheduler", path, f"{path}: [scheduler]", problems)

    gateway_cfg = GatewayConfig(
        listen=gateway.get("listen", _address, "127.0.0.1:8009"),
        max_body=gateway.get("max_body", parse_size, "64m"),
        read_timeout=gateway.get("read_timeout", _positive_duration, "30m"),
        nginx=gateway.get("nginx", _text, "nginx"),
        njs_module=gateway.get("njs_module", _text, "/usr/lib/nginx/modules/ngx_http_js_module.so"),
    )
    name = waker.get("name", _stack_name, "spark")
    waker_cfg = WakerConfig(
        listen=waker.get("listen", _address, "127.0.0.1:18080"),
        docker_host=waker.get("docker_host", _text, os.environ.get("DOCKER_HOST", "")),
        name=name,
        model_port_base=waker.get("model_port_base", _port, 18100),
        runtime_dir=Path(waker.get("runtime_dir", _text, _default_runtime_dir(name))),
    )
    scheduler_cfg = SchedulerConfig(
        start_timeout=scheduler.get("start_timeout", _positive_duration, "15m"),
        stop_timeout=scheduler.get("stop_timeout", parse_duration, "10s"),
        idle_timeout=scheduler.get("idle_timeout", parse_duration, "20m"),
        min_uptime=scheduler.get("min_uptime", parse_duration, "30s"),
        gpu_capacity=scheduler.get("gpu_capacity", _capacity, 1.0),
        on_busy=scheduler.get("on_busy", _choice("queue", "reject"), "queue"),
        queue_timeout=scheduler.get("queue_timeout", _positive_duration, "10m"),
        max_start_failures=scheduler.get("max_start_failures", _positive_int, 3),
        start_backoff=scheduler.get("start_backoff", parse_duration, "2m"),
    )
    for table in (gateway, waker, scheduler):
        table.reject_unknown()

    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(f"{path}: [defaults] must be a table of model keys")
        defaults = {}
    for key in ("id", "aliases", "host_port"):
        if key in defaults:
            problems.append(f"{path}: [defaults]: field '{key}' is per model and cannot have a default")
    entries = raw.get("model", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append(f"{path}: 'model' must be an array of tables, written [[model]]")
        entries = []
    models = tuple(
        _parse_model(i, entry, defaults, scheduler_cfg, waker_cfg, path, problems)
        for i, entry in enumerate(entries)
    )
    _check_across_models(models, gateway_cfg, waker_cfg, path, problems)
    if problems:
        raise ConfigError(path, problems)
    return Config(path, gateway_cfg, waker_cfg, scheduler_cfg, models)


def _default_runtime_dir(name: str) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return str(Path(base) / f"waker-{name}")


class _Table:
    """Reads typed fields from one TOML table, recording problems instead of stopping at the first."""

    def __init__(self, raw: Any, key: str | None, path: Path, where: str, problems: list[str]) -> None:
        table = raw.get(key, {}) if key is not None else raw
        if not isinstance(table, dict):
            problems.append(f"{where} must be a table")
            table = {}
        self.table, self.path, self.where, self.problems = table, path, where, problems
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


_MODEL_KEYS = {
    "id", "aliases", "image", "command", "entrypoint", "port", "health", "env", "volumes", "gpus",
    "gpu_memory", "shm_size", "ulimits", "host_port", "exclusive", "keep_warm", "start_timeout", "stop_timeout",
    "idle_timeout", "min_uptime",
}
_MERGED_TABLES = ("env", "ulimits")


def _parse_model(
    index: int,
    entry: dict[str, Any],
    defaults: dict[str, Any],
    scheduler: SchedulerConfig,
    waker: WakerConfig,
    path: Path,
    problems: list[str],
) -> ModelConfig:
    merged = {**defaults, **entry}
    for key in _MERGED_TABLES:
        if isinstance(defaults.get(key), dict) and isinstance(entry.get(key), dict):
            merged[key] = {**defaults[key], **entry[key]}
    label = entry.get("id") if isinstance(entry.get("id"), str) else f"#{index + 1}"
    model = _Table(merged, None, path, f"{path}: model '{label}'", problems)
    model_id = model.get("id", _model_id, required=True)
    config_dir = path.parent.resolve()
    result = ModelConfig(
        id=model_id if model_id is not None else label,  # an invalid id is reported; the label names it
        aliases=tuple(model.get("aliases", _list_of(_model_id), [])),
        image=model.get("image", _text, required=True),
        command=tuple(model.get("command", _list_of(_text), [])),
        entrypoint=_tuple_or_none(model.get("entrypoint", _list_of(_text))),
        port=model.get("port", _port, 8000),
        health=model.get("health", _http_path, "/health"),
        env=tuple(sorted(model.get("env", _env, {}).items())),
        volumes=tuple(_resolve_volume(v, config_dir) for v in model.get("volumes", _list_of(_volume), [])),
        gpus=model.get("gpus", _gpus, ""),
        gpu_memory=model.get("gpu_memory", _fraction, 0.0),
        shm_size=model.get("shm_size", parse_size),
        ulimits=tuple(sorted(model.get("ulimits", _ulimits, {}).items())),
        host_port=model.get("host_port", _port, waker.model_port_base + index),
        exclusive=model.get("exclusive", _bool, False),
        keep_warm=model.get("keep_warm", _bool, False),
        start_timeout=model.get("start_timeout", _positive_duration, scheduler.start_timeout),
        stop_timeout=model.get("stop_timeout", parse_duration, scheduler.stop_timeout),
        idle_timeout=model.get("idle_timeout", parse_duration, scheduler.idle_timeout),
        min_uptime=model.get("min_uptime", parse_duration, scheduler.min_uptime),
    )
    model.reject_unknown(_MODEL_KEYS)
    where = f"{path}: model '{result.id}'"
    if result.keep_warm and result.exclusive:
        problems.append(f"{where}: a keep_warm model cannot be exclusive: it would keep every other model out")
    if scheduler.gpu_capacity is not None and result.gpu_memory > scheduler.gpu_capacity:
        problems.append(f"{where}: field 'gpu_memory': {result.gpu_memory:g} is more than [scheduler] "
                        f"gpu_capacity ({scheduler.gpu_capacity:g}), so it could never start")
    return result


def _check_across_models(
    models: tuple[ModelConfig, ...], gateway: GatewayConfig, waker: WakerConfig, path: Path, problems: list[str]
) -> None:
    owner: dict[str, str] = {}
    ports: dict[int, str] = {}
    for listen in (gateway.listen, waker.listen):
        if listen is not None:
            ports[listen.port] = "the gateway or the waker"
    for model in models:
        for name in model.names:
            if name in owner:
                what = "id" if name == model.id else "alias"
                problems.append(
                    f"{path}: model '{model.id}': {what} '{name}' is already used by model '{owner[name]}'; "
                    "ids and aliases must be unique together"
                )
            elif name.lower() in RESERVED_NAMES:
                problems.append(
                    f"{path}: model '{model.id}': the name '{name}' is reserved (it is an API route); pick another"
                )
            owner.setdefault(name, model.id)
        if model.host_port is not None:
            if model.host_port in ports:
                problems.append(
                    f"{path}: model '{model.id}': field 'host_port': port {model.host_port} is already used by "
                    f"{ports[model.host_port]}; set another host_port or [waker] model_port_base"
                )
            ports.setdefault(model.host_port, f"model '{model.id}'")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    return value


def _model_id(value: Any) -> str:
    text = _text(value)
    if not MODEL_ID.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a valid name: use 1 to 128 of the characters A-Z a-z 0-9 . _ : -"
        )
    return text


def _stack_name(value: Any) -> str:
    text = _text(value)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,30}", text):
        raise ValueError(f"{text!r} is not a valid name: 1 to 31 of a-z 0-9 _ . -, starting with a letter or digit")
    return text


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def parse(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(f"expected an array, got {_type_name(value)}")
        return [item(v) for v in value]
    return parse


def _tuple_or_none(value: list[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number between 1 and 65535, got {value!r}")
    return value


def _address(value: Any) -> Address:
    text = _text(value)
    match = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d+)", text)
    if not match:
        raise ValueError(f"expected HOST:PORT such as \"127.0.0.1:8009\", got {text!r}")
    host = match.group(1) or match.group(2) or "0.0.0.0"
    return Address(host, _port(int(match.group(3))))


def _http_path(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise ValueError(f"expected an HTTP path starting with '/', got {text!r}")
    return text


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of NAME = \"value\", got {_type_name(value)}")
    for key, item in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise ValueError(f"variable {key!r}: expected a string, got {_type_name(item)}")
    return {key: str(item) for key, item in value.items()}


def _volume(value: Any) -> str:
    text = _text(value)
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise ValueError(f"expected \"HOST_PATH_OR_VOLUME:/container/path[:ro]\", got {text!r}")
    if len(parts) == 3 and not set(parts[2].split(",")) <= {"ro", "rw", "z", "Z", "shared", "slave", "private"}:
        raise ValueError(f"unknown volume option {parts[2]!r} in {text!r}")
    return text


def _resolve_volume(volume: str, config_dir: Path) -> str:
    """Relative host paths are relative to the config file, as in compose files."""
    source, rest = volume.split(":", 1)
    if source.startswith((".", "~")):
        source = str((config_dir / Path(source).expanduser()).resolve())
    return f"{source}:{rest}"


def _gpus(value: Any) -> str:
    text = _text(value).strip()
    if text and text != "all" and not re.fullmatch(r"\d+(,\d+)*", text):
        raise ValueError(f"expected \"all\", a list of device indexes such as \"0,1\", or \"\", got {text!r}")
    return text


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"expected a fraction of the GPU in (0, 1], such as 0.5, got {value!r}")
    return float(value)


def _ulimits(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table such as {{ memlock = -1 }}, got {_type_name(value)}")
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"ulimit {key!r}: expected an integer (-1 for unlimited), got {item!r}")
    return dict(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def _capacity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a positive number (1.0 = the whole GPU), got {value!r}")
    return float(value)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(repr(o) for o in options)}, got {value!r}")
        return value
    return parse


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, got {value!r}")
    return seconds


def _type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
