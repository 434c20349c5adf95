"""Per model `weights`: the Hugging Face repository whose files the engine loads, which the waker
fetches before the container starts (issue 24). Derived from the engine's command where it names a
repository (vLLM `serve <repo>` or `--model`, SGLang `--model-path`, llama.cpp `-hf repo[:quant]`),
or given: `weights = { repo = "...", revision = "...", include = [...] }`; `weights = false` for a
model that fetches its own, or loads from a local path."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

from waker.config import fields

# What a Hugging Face repository id looks like: `org/name`, each part of letters, digits, - _ .
REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
WEIGHTS_KEYS = {"repo", "revision", "include"}
T = TypeVar("T")


class Engine(StrEnum):
    """Whose conventions the weights follow: where it looks for them and which files it reads."""

    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMA_CPP = "llama.cpp"
    OTHER = "other"  # given by hand for an engine the waker does not know: the whole repository


DEFAULT_HF_HOME = "/root/.cache/huggingface"  # the engines' images run as root


@dataclass(frozen=True, slots=True)
class Weights:
    repo: str
    revision: str = ""  # "": the repository's default branch
    include: tuple[str, ...] = ()  # glob patterns of the files to fetch; (): the engine's own choice
    quant: str = ""  # llama.cpp's `:Q8_0` tag: which GGUF file of the repository
    engine: Engine = Engine.OTHER
    derived: bool = False  # read from the command, not given
    cache: str = ""  # the Hugging Face cache the engine reads, in its container
    host_cache: str = ""  # the same directory on the host (a bind mount's source); "": not on one
    # vLLM's `--download-dir` on the host: vLLM reads its weights there when it runs online (offline it
    # reads `cache` only), so they are linked there too.
    download_dir_host: str = ""

    @property
    def branch(self) -> str:
        return self.revision or "main"


def cache_in_container(engine: Engine, env: dict[str, str]) -> str:
    """The cache directory the engine reads (huggingface_hub's order; llama.cpp reads LLAMA_CACHE
    first), laid out as `models--org--name/{blobs,refs,snapshots}`."""
    if engine is Engine.LLAMA_CPP and env.get("LLAMA_CACHE"):
        return env["LLAMA_CACHE"].rstrip("/")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return env[key].rstrip("/")
    return (env.get("HF_HOME") or DEFAULT_HF_HOME).rstrip("/") + "/hub"


def on_host(path: str, volumes: tuple[str, ...]) -> str:
    """Where `path` (in the container) is on the host: under the deepest bind mount holding it; ""
    when it is in no bind mount (the container's own layer, or a named volume)."""
    best = ("", "")
    for volume in volumes:
        source, target = volume.split(":")[:2]
        target = target.rstrip("/") or "/"
        inside = path == target or path.startswith(target.rstrip("/") + "/")
        if source.startswith("/") and inside and len(target) > len(best[1]):
            best = (source, target)
    source, target = best
    if not source:
        return ""
    rest = path[len(target) :].lstrip("/")
    return f"{source.rstrip('/')}/{rest}" if rest else source


def engine_of(entrypoint: tuple[str, ...] | None, command: tuple[str, ...]) -> Engine:
    words = " ".join((*(entrypoint or ()), *command[:1]))
    if "sglang" in words:
        return Engine.SGLANG
    if "llama-server" in words or "llama.cpp" in words:
        return Engine.LLAMA_CPP
    if "vllm" in words or (command[:1] == ("serve",)):
        return Engine.VLLM
    return Engine.OTHER


def derived(entrypoint: tuple[str, ...] | None, command: tuple[str, ...]) -> Weights | None:
    """The repository the engine's command names, or None (a local path, or no repository named)."""
    engine = engine_of(entrypoint, command)
    argv = (*(entrypoint or ()), *command)  # `serve` may be the entrypoint's, as in vLLM's own image
    quant = ""
    if engine is Engine.VLLM:
        serve = argv.index("serve") if "serve" in argv else -1
        positional = argv[serve + 1] if 0 <= serve < len(argv) - 1 else ""
        repo = positional if positional and not positional.startswith("-") else fields.option(argv, "--model")
        revision = fields.option(argv, "--revision")
    elif engine is Engine.SGLANG:
        repo, revision = fields.option(argv, "--model-path", "--model"), fields.option(argv, "--revision")
    elif engine is Engine.LLAMA_CPP:
        tagged = fields.option(argv, "-hf", "--hf-repo", "-hfr")
        repo, _, quant = (tagged or "").partition(":")
        revision = None
    else:
        return None
    if not repo or not REPO.fullmatch(repo):
        return None
    return Weights(repo, revision or "", (), quant, engine, derived=True)


def located(
    weights: Weights | None, env: dict[str, str], volumes: tuple[str, ...], argv: tuple[str, ...] = ()
) -> Weights | None:
    """`weights` with the cache the engine reads, in its container and on the host; for vLLM with
    `--download-dir`, that directory on the host too."""
    if weights is None:
        return None
    cache = cache_in_container(weights.engine, env)
    download_dir = fields.option(argv, "--download-dir") if weights.engine is Engine.VLLM else None
    also = on_host(download_dir.rstrip("/"), volumes) if download_dir else ""
    return replace(weights, cache=cache, host_cache=on_host(cache, volumes), download_dir_host=also)


def weights_field(value: Any, entrypoint: tuple[str, ...] | None, command: tuple[str, ...]) -> Weights | None:
    """`weights` as given: false (none), or a table naming the repository."""
    if value is False:
        return None
    if not isinstance(value, dict):
        raise ValueError(
            'expected false (the engine fetches its own) or a table such as { repo = "org/name" }, '
            f"got {fields.type_name(value)}"
        )
    unknown = sorted(set(value) - WEIGHTS_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; the keys are {', '.join(sorted(WEIGHTS_KEYS))}")
    if "repo" not in value:
        raise ValueError('"repo" is required, such as { repo = "Qwen/Qwen3-8B" }')
    repo = _key(value, "repo", fields.string)
    if not REPO.fullmatch(repo):
        raise ValueError(f'repo {repo!r} is not a Hugging Face repository id such as "Qwen/Qwen3-8B"')
    revision = _key(value, "revision", fields.string, "")
    include = tuple(_key(value, "include", fields.list_of(fields.string), []))
    return Weights(repo, revision, include, "", engine_of(entrypoint, command))


def _key(table: dict[str, Any], key: str, parse: Callable[[Any], T], default: Any = None) -> T:
    try:
        return parse(table.get(key, default))
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
