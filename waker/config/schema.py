"""The typed, immutable configuration, read from `config/models.toml` and validated at the boundary.

Everything inside the waker trusts these objects; every problem found here is reported at once, each
naming the file, the model and the field, so that one `waker check` run shows the whole list.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from waker.config import externals as config_externals
from waker.config import fields
from waker.config import fixups as config_fixups
from waker.config import hosts as config_hosts
from waker.config import ray as config_ray
from waker.config import weights as config_weights
from waker.config.externals import ExternalConfig
from waker.config.fields import Address, Source
from waker.config.fixups import Fixup, fixup_problems
from waker.config.hosts import HostConfig
from waker.config.sleep import MODEL_KEYS as SLEEP_KEYS
from waker.config.sleep import SleepConfig, parse_sleep
from waker.config.units import parse_duration, parse_size
from waker.config.weights import Weights
from waker.errors import ConfigError

# First path segments of the OpenAI and vLLM routes: a model named like one would shadow the route
# in path routing (/v1/<model>/...), so such ids are refused.
RESERVED_NAMES = frozenset(
    {
        "audio",
        "batches",
        "chat",
        "classify",
        "completions",
        "detokenize",
        "embeddings",
        "files",
        "fine_tuning",
        "images",
        "invocations",
        "load",
        "messages",
        "models",
        "moderations",
        "pooling",
        "rerank",
        "responses",
        "score",
        "tokenize",
        "uploads",
        "vector_stores",
    }
)

DEFAULT_CONFIG_PATH = Path("config/models.toml")


class LoadingFeedback(StrEnum):
    """What a streaming chat completion for a model that is not ready gets while it waits."""

    REASONING = "reasoning"  # progress lines as `delta.reasoning_content` chunks, then the model's answer
    OFF = "off"  # nothing until the model's answer, as for any other request


def parse_feedback(table: fields.Table, default: LoadingFeedback) -> LoadingFeedback:
    return table.get("loading_feedback", fields.member(LoadingFeedback), default)


class ModelStatus(StrEnum):
    """How far a catalogue entry has been checked (`status`)."""

    VALIDATED = "validated"  # run and checked on the target box
    EXPERIMENTAL = "experimental"  # served, but not (yet) validated there
    DISABLED = "disabled"  # declared for the record, not served (its `notes` say why)


class OnBusy(StrEnum):
    """What a request gets when its model cannot start for want of room (`[scheduler] on_busy`)."""

    QUEUE = "queue"  # it waits, up to queue_timeout
    REJECT = "reject"  # 429 at once, with a Retry-After estimated from what holds the GPU


class PullPolicy(StrEnum):
    MISSING = "missing"  # pull when the image is not on the Docker host
    ALWAYS = "always"  # pull before every start; fall back to the local image if the pull fails
    NEVER = "never"  # never pull: a missing image is an error naming how to get it


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: Address
    max_body: int
    read_timeout: float
    nginx: str
    njs_module: str
    client_timeout: float
    # Connections one client address may hold open past their request head (slowloris, a runaway client)
    max_connections_per_client: int
    api_keys: tuple[str, ...]
    allow_no_keys: bool
    cors_origins: tuple[str, ...]
    client_model_control: bool  # clients may load and unload models (POST /models/load, /models/unload)
    loading_feedback: LoadingFeedback  # the default of the models' own setting


@dataclass(frozen=True, slots=True)
class WakerConfig:
    listen: Address
    docker_host: str
    name: str
    model_port_base: int
    runtime_dir: Path
    admin_token: str
    network: str  # "" = models publish on 127.0.0.1:host_port; else they join this Docker network
    model_ip_base: str
    egress_network: str
    state_dir: Path = Path()  # what the waker learns and keeps across restarts (models' memory footprints)
    hf_token: str = field(default="", repr=False)  # the Hugging Face token weights are fetched with; "": HF_TOKEN


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    start_timeout: float
    stop_timeout: float
    idle_timeout: float
    min_uptime: float
    gpu_capacity: float
    on_busy: OnBusy
    queue_timeout: float
    max_start_failures: int
    start_backoff: float
    sleep_timeout: float  # the default of the models' own: asleep this long, a model is stopped
    wake_timeout: float
    max_wake_failures: int  # a model whose wake failed this many times in a row is stopped, not slept
    memory_floor: int  # bytes of host memory kept available: below it the memory guard stops a model; 0: off
    drop_page_cache: bool = False  # before a start that free memory cannot cover but reclaimable cache can


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    aliases: tuple[str, ...]
    image: str
    pull: PullPolicy
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
    address: Address  # where nginx and the waker reach the model server
    context_length: int | None
    fixups: tuple[Fixup, ...]  # request rewrites nginx applies for this model (nginx/route.js)
    vision: bool
    tools: bool
    description: str
    status: ModelStatus
    notes: str
    # The catalogue guide (docs/models.md): where the recipe comes from and what the model is for.
    source: Source | None
    best_for: str
    tradeoffs: str
    known_issues: tuple[str, ...]
    picks: tuple[str, ...]
    exclusive: bool
    keep_warm: bool
    start_timeout: float
    stop_timeout: float
    idle_timeout: float
    min_uptime: float
    sleep: SleepConfig
    host: str = ""  # the [[host]] it must run on (for hosts = 2: its Ray head's); "" = placed by the scheduler
    hosts: int = 1  # 2 = tensor-parallel over two hosts on Ray
    ray: config_ray.RayConfig = config_ray.RayConfig()  # for hosts = 2: the Ray port and the worker's command
    loading_feedback: LoadingFeedback = LoadingFeedback.REASONING
    memory: int = 0  # bytes of host memory it takes when loaded (weights, KV cache, heaps); 0: not declared
    weights: Weights | None = None  # the repository the waker fetches before a start; None: the engine's own

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    gateway: GatewayConfig
    waker: WakerConfig
    scheduler: SchedulerConfig
    models: tuple[ModelConfig, ...]  # the models served
    disabled: tuple[ModelConfig, ...] = ()  # declared with status = "disabled": kept for the record, not served
    overrides: tuple[str, ...] = ()  # `--set` values, applied again on every reload
    hosts: tuple[HostConfig, ...] = ()  # the [[host]] entries; none = the local engine alone
    externals: tuple[ExternalConfig, ...] = ()  # the [[external]] workloads on this machine
    # Every request names a model: found by id or alias in one step, not by a walk through the list.
    _by_name: dict[str, ModelConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {name: m for m in reversed(self.models) for name in reversed(m.names)}
        object.__setattr__(self, "_by_name", by_name)

    @property
    def placement_hosts(self) -> tuple[HostConfig, ...]:
        """The hosts models are placed on: the [[host]] entries, else the one implicit local host."""
        return self.hosts or (config_hosts.implicit_host(self.waker.docker_host, self.scheduler.gpu_capacity),)

    def model(self, model_id: str) -> ModelConfig | None:
        model = self._by_name.get(model_id)
        return model if model is not None and model.id == model_id else None

    def resolve(self, name: str) -> ModelConfig | None:
        """The model a client means by an id or an alias."""
        return self._by_name.get(name)


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


def load_config(path: Path | str | None = None, overrides: tuple[str, ...] = ()) -> Config:
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
    problems: list[str] = []
    for override in overrides:
        apply_override(raw, override, problems)
    if problems:
        raise ConfigError(path, problems)
    return parse_config(raw, path, overrides)


def parse_config(raw: dict[str, Any], path: Path, overrides: tuple[str, ...] = ()) -> Config:
    problems: list[str] = []
    known = {"gateway", "waker", "scheduler", "defaults", "model", "host", "external"}
    for key in raw:
        if key not in known:
            problems.append(f"{path}: unknown section [{key}]; the sections are {', '.join(sorted(known))}")
    gateway = fields.Table(raw, "gateway", f"{path}: [gateway]", problems)
    waker = fields.Table(raw, "waker", f"{path}: [waker]", problems)
    scheduler = fields.Table(raw, "scheduler", f"{path}: [scheduler]", problems)

    gateway_cfg = GatewayConfig(
        listen=gateway.get("listen", fields.address, "127.0.0.1:8009"),
        max_body=gateway.get("max_body", parse_size, "64m"),
        read_timeout=gateway.get("read_timeout", fields.positive_duration, "30m"),
        nginx=gateway.get("nginx", fields.string, "nginx"),
        njs_module=gateway.get("njs_module", fields.string, "/usr/lib/nginx/modules/ngx_http_js_module.so"),
        client_timeout=gateway.get("client_timeout", fields.positive_duration, "60s"),
        max_connections_per_client=gateway.get("max_connections_per_client", fields.positive_int, 256),
        api_keys=tuple(
            dict.fromkeys(
                [
                    *gateway.get("api_keys", fields.list_of(fields.api_key), []),
                    *fields.secret_file_field(gateway, "api_keys_file", path, fields.api_key),
                ]
            )
        ),
        allow_no_keys=gateway.get("allow_no_keys", fields.boolean, False),
        cors_origins=tuple(gateway.get("cors_origins", fields.list_of(fields.origin), [])),
        client_model_control=gateway.get("client_model_control", fields.boolean, False),
        loading_feedback=parse_feedback(gateway, LoadingFeedback.REASONING),
    )
    name = waker.get("name", fields.stack_name, "spark")
    waker_cfg = WakerConfig(
        listen=waker.get("listen", fields.address, "127.0.0.1:18080"),
        docker_host=waker.get("docker_host", fields.string, os.environ.get("DOCKER_HOST", "")),
        name=name,
        model_port_base=waker.get("model_port_base", fields.port, 18100),
        runtime_dir=Path(waker.get("runtime_dir", fields.string, _default_runtime_dir(name))),
        admin_token=fields.secret_field(waker, "admin_token", path),
        network=waker.get("network", fields.docker_network, ""),
        model_ip_base=waker.get("model_ip_base", fields.ipv4) or "",
        egress_network=waker.get("egress_network", fields.docker_network, ""),
        state_dir=Path(waker.get("state_dir", fields.string, _default_state_dir(name))),
        hf_token=fields.secret_field(waker, "hf_token", path),
    )
    if waker_cfg.network and not waker_cfg.model_ip_base:
        problems.append(
            f"{path}: [waker]: 'network' is set, so 'model_ip_base' is needed too: the first model's "
            "address in that network's subnet, outside its dynamic ip_range (see compose.yaml)"
        )
    if waker_cfg.egress_network and not waker_cfg.network:
        problems.append(
            f"{path}: [waker]: 'egress_network' needs 'network' (the network the gateway reaches models on)"
        )
    scheduler_cfg = SchedulerConfig(
        start_timeout=scheduler.get("start_timeout", fields.positive_duration, "15m"),
        stop_timeout=scheduler.get("stop_timeout", parse_duration, "10s"),
        idle_timeout=scheduler.get("idle_timeout", parse_duration, "20m"),
        min_uptime=scheduler.get("min_uptime", parse_duration, "30s"),
        gpu_capacity=scheduler.get("gpu_capacity", fields.capacity, 1.0),
        on_busy=scheduler.get("on_busy", fields.member(OnBusy), OnBusy.QUEUE),
        queue_timeout=scheduler.get("queue_timeout", fields.positive_duration, "10m"),
        max_start_failures=scheduler.get("max_start_failures", fields.positive_int, 3),
        start_backoff=scheduler.get("start_backoff", parse_duration, "2m"),
        sleep_timeout=scheduler.get("sleep_timeout", parse_duration, "1h"),
        wake_timeout=scheduler.get("wake_timeout", fields.positive_duration, "2m"),
        max_wake_failures=scheduler.get("max_wake_failures", fields.positive_int, 2),
        memory_floor=scheduler.get("memory_floor", fields.memory_floor, "2GiB"),
        drop_page_cache=scheduler.get("drop_page_cache", fields.boolean, False),
    )
    for table in (gateway, waker, scheduler):
        table.reject_unknown()
    hosts = config_hosts.parse_hosts(
        raw.get("host"), path, "docker_host" in waker.table, waker_cfg.network, scheduler_cfg.gpu_capacity, problems
    )

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
        _parse_model(i, entry, defaults, scheduler_cfg, waker_cfg, gateway_cfg, path, problems)
        for i, entry in enumerate(entries)
    )
    _check_across_models(models, gateway_cfg, waker_cfg, path, problems)
    config_hosts.check_placement(models, hosts, scheduler_cfg.gpu_capacity, path, problems)
    externals = config_externals.parse_externals(raw.get("external"), path, problems)
    if problems:
        raise ConfigError(path, problems)
    served = tuple(m for m in models if m.status is not ModelStatus.DISABLED)
    disabled = tuple(m for m in models if m.status is ModelStatus.DISABLED)
    return Config(path, gateway_cfg, waker_cfg, scheduler_cfg, served, disabled, overrides, hosts, externals)


def _default_state_dir(name: str) -> str:
    """systemd's StateDirectory where it gives one, else the user's XDG state directory."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return state.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / f"waker-{name}")


def _default_runtime_dir(name: str) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return str(Path(base) / f"waker-{name}")


_MODEL_KEYS = {
    "weights",
    "id",
    "aliases",
    "image",
    "pull",
    "command",
    "entrypoint",
    "port",
    "health",
    "env",
    "volumes",
    "gpus",
    "gpu_memory",
    "shm_size",
    "memory",
    "ulimits",
    "host_port",
    "context_length",
    "fixups",
    "vision",
    "tools",
    "description",
    "status",
    "notes",
    "source",
    "best_for",
    "tradeoffs",
    "known_issues",
    "picks",
    "exclusive",
    "keep_warm",
    "start_timeout",
    "stop_timeout",
    "idle_timeout",
    "min_uptime",
    *SLEEP_KEYS,
    "host",
    "hosts",
    "loading_feedback",
} | set(config_ray.MODEL_KEYS)
_MERGED_TABLES = ("env", "ulimits")


def _parse_model(
    index: int,
    entry: dict[str, Any],
    defaults: dict[str, Any],
    scheduler: SchedulerConfig,
    waker: WakerConfig,
    gateway: GatewayConfig,
    path: Path,
    problems: list[str],
) -> ModelConfig:
    merged = {**defaults, **entry}
    for key in _MERGED_TABLES:
        if isinstance(defaults.get(key), dict) and isinstance(entry.get(key), dict):
            merged[key] = {**defaults[key], **entry[key]}
    given_id = entry.get("id")
    label = given_id if isinstance(given_id, str) else f"#{index + 1}"
    model = fields.Table(merged, None, f"{path}: model '{label}'", problems)
    model_id = model.get("id", fields.model_id, required=True)
    config_dir = path.parent.resolve()
    port = model.get("port", fields.port, 8000)
    host_port = model.get("host_port", fields.port, port if merged.get("hosts") == 2 else waker.model_port_base + index)
    gpu_memory = model.get("gpu_memory", fields.fraction, 0.0)
    command = tuple(model.get("command", fields.list_of(fields.string), []))
    entrypoint = fields.tuple_or_none(model.get("entrypoint", fields.list_of(fields.string)))
    env = model.get("env", fields.env, {})
    volumes = tuple(
        fields.resolve_volume(v, config_dir) for v in model.get("volumes", fields.list_of(fields.volume), [])
    )
    weights = config_weights.located(
        model.get("weights", lambda v: config_weights.weights_field(v, entrypoint, command))
        if "weights" in merged
        else config_weights.derived(entrypoint, command),
        env,
        volumes,
        (*(entrypoint or ()), *command),
    )
    result = ModelConfig(
        id=model_id if model_id is not None else label,  # an invalid id is reported; the label names it
        aliases=tuple(model.get("aliases", fields.list_of(fields.model_id), [])),
        image=model.get("image", fields.string, required=True),
        pull=model.get("pull", fields.member(PullPolicy), PullPolicy.MISSING),
        command=command,
        entrypoint=entrypoint,
        port=port,
        health=model.get("health", fields.http_path, "/health"),
        env=tuple(sorted(env.items())),
        volumes=volumes,
        gpus=model.get("gpus", fields.gpus, ""),
        gpu_memory=gpu_memory,
        shm_size=model.get("shm_size", parse_size),
        memory=model.get("memory", parse_size, 0),
        ulimits=tuple(sorted(model.get("ulimits", fields.ulimits, {}).items())),
        host_port=host_port,
        address=_model_address(index, host_port, port, waker, f"{path}: model '{label}'", problems),
        context_length=model.get("context_length", fields.positive_int),
        fixups=model.get("fixups", config_fixups.fixups, ()),
        vision=model.get("vision", fields.boolean, False),
        tools=model.get("tools", fields.boolean, False),
        description=model.get("description", fields.string, ""),
        status=model.get("status", fields.member(ModelStatus), ModelStatus.VALIDATED),
        notes=model.get("notes", fields.string, ""),
        source=model.get("source", fields.source),
        best_for=model.get("best_for", fields.string, ""),
        tradeoffs=model.get("tradeoffs", fields.string, ""),
        known_issues=tuple(model.get("known_issues", fields.list_of(fields.string), [])),
        picks=tuple(dict.fromkeys(model.get("picks", fields.list_of(fields.choice(*fields.PICKS)), []))),
        exclusive=model.get("exclusive", fields.boolean, False),
        keep_warm=model.get("keep_warm", fields.boolean, False),
        start_timeout=model.get("start_timeout", fields.positive_duration, scheduler.start_timeout),
        stop_timeout=model.get("stop_timeout", parse_duration, scheduler.stop_timeout),
        idle_timeout=model.get("idle_timeout", parse_duration, scheduler.idle_timeout),
        min_uptime=model.get("min_uptime", parse_duration, scheduler.min_uptime),
        sleep=parse_sleep(model, entry, gpu_memory, command, scheduler.sleep_timeout, scheduler.wake_timeout),
        host=model.get("host", config_hosts.host_name) or "",
        hosts=model.get("hosts", config_hosts.host_count, 1),
        loading_feedback=parse_feedback(model, gateway.loading_feedback),
        ray=config_ray.parse_ray(model),
        weights=weights,
    )
    model.reject_unknown(_MODEL_KEYS)
    where = f"{path}: model '{result.id}'"
    if result.status is ModelStatus.DISABLED and not result.notes:
        problems.append(f"{where}: a disabled model needs 'notes' saying why, so that users know")
    problems += [f"{where}: field 'fixups': {problem}" for problem in fixup_problems(result)]
    problems += config_ray.ray_problems(where, result, entry, result.sleep.enabled, waker.network)
    if "weights" in merged and weights is not None and not weights.host_cache:
        problems.append(
            f"{where}: field 'weights': the engine reads its weights from {weights.cache}, which is in no "
            f'volume: mount a host directory there, such as "../data/huggingface:{weights.cache.removesuffix("/hub")}"'
        )
    if result.keep_warm and result.exclusive:
        problems.append(f"{where}: a keep_warm model cannot be exclusive: it would keep every other model out")
    return result


def _model_address(
    index: int, host_port: int, port: int, waker: WakerConfig, where: str, problems: list[str]
) -> Address:
    """Host deployment: the published loopback port. Network deployment: a fixed address per model
    (model_ip_base + position), so that nginx needs no DNS and keeps its upstream connections."""
    if not waker.network or not waker.model_ip_base:
        return Address("127.0.0.1", host_port)
    base = ipaddress.IPv4Address(waker.model_ip_base)
    try:
        return Address(str(base + index), port)
    except ValueError:
        problems.append(f"{where}: [waker] model_ip_base {base} leaves no address for this model: pick a lower one")
        return Address(str(base), port)


def _check_across_models(
    models: tuple[ModelConfig, ...], gateway: GatewayConfig, waker: WakerConfig, path: Path, problems: list[str]
) -> None:
    owner: dict[str, str] = {}
    ports: dict[int, str] = {}
    for listen in (gateway.listen, waker.listen):
        ports[listen.port] = "the gateway or the waker"
    for model in models:
        for name in model.names:
            if name in owner:
                what = "id" if name == model.id else "alias"
                problems.append(
                    f"{path}: model '{model.id}': {what} '{name}' is already used by model "
                    f"'{owner[name]}'; ids and aliases must be unique together"
                )
            elif name.lower() in RESERVED_NAMES:
                problems.append(
                    f"{path}: model '{model.id}': the name '{name}' is reserved (it is an API route); pick another"
                )
            owner.setdefault(name, model.id)
        if model.host_port in ports:
            problems.append(
                f"{path}: model '{model.id}': field 'host_port': port {model.host_port} is already used "
                f"by {ports[model.host_port]}; set another host_port or [waker] model_port_base"
            )
        ports.setdefault(model.host_port, f"model '{model.id}'")
        problems += config_ray.claim_ray_port(f"{path}: model '{model.id}'", model, ports)
