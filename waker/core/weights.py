"""Which files of a model's repository the engine loads, so that the waker fetches those and no more
(pure: given the repository's listing). vLLM and SGLang load the safetensors when there are any (not
the `.bin` or `.pt` copies many repositories also hold), only the shards the safetensors index maps,
never `original/` (the upstream checkpoint some repositories keep beside the converted one), and every
other file (config, tokenizer, chat template, processor). llama.cpp loads one GGUF, chosen by its
`:quant` tag as `llama-server -hf` chooses it, with its split shards and its vision projector."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from waker.config.weights import Engine

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# llama-server's own choice without a tag, in order.
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")
NOT_THE_MODEL = re.compile(r"mmproj|imatrix|mtp-|eagle3-|dflash-|dspark-", re.IGNORECASE)
SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


@dataclass(frozen=True, slots=True)
class RepoFile:
    path: str
    size: int
    blob: str  # its name in the cache's blobs/: the LFS sha256, else the git object id


def needs_index(engine: Engine, include: tuple[str, ...], files: Iterable[RepoFile]) -> bool:
    """Whether the choice needs the safetensors index's weight map (it names the shards loaded)."""
    return engine in (Engine.VLLM, Engine.SGLANG) and not include and any(f.path == SAFETENSORS_INDEX for f in files)


def chosen(
    engine: Engine,
    include: tuple[str, ...],
    quant: str,
    files: Iterable[RepoFile],
    weight_map: frozenset[str] | None = None,
) -> tuple[RepoFile, ...]:
    """The files to fetch: those `include` matches when given, else those the engine loads."""
    listed = sorted(files, key=lambda f: f.path)
    if include:
        return tuple(f for f in listed if any(fnmatch.fnmatch(f.path, pattern) for pattern in include))
    if engine is Engine.LLAMA_CPP:
        return _gguf(listed, quant)
    if engine is Engine.OTHER:
        return tuple(listed)
    kept = [f for f in listed if not f.path.startswith("original/")]
    if any(f.path.endswith(".safetensors") for f in kept):
        kept = [f for f in kept if not f.path.endswith(WEIGHT_SUFFIXES[1:])]
        if weight_map:
            kept = [f for f in kept if not f.path.endswith(".safetensors") or f.path in weight_map]
    return tuple(kept)


def _gguf(listed: list[RepoFile], quant: str) -> tuple[RepoFile, ...]:
    models = [f for f in listed if f.path.endswith(".gguf") and not NOT_THE_MODEL.search(f.path.rsplit("/", 1)[-1])]
    model = None
    for tag in (quant,) if quant else DEFAULT_QUANTS:
        pattern = re.compile(re.escape(tag) + r"[.-]", re.IGNORECASE)
        model = next((f for f in models if pattern.search(f.path)), None)
        if model is not None:
            break
    if model is None and not quant and models:
        model = models[0]
    if model is None:
        return ()
    split = SPLIT.search(model.path)
    if split:
        stem = model.path[: split.start()]
        picked = [f for f in models if f.path.startswith(stem) and SPLIT.search(f.path)]
    else:
        picked = [model]
    projectors = [f for f in listed if f.path.endswith(".gguf") and "mmproj" in f.path.rsplit("/", 1)[-1].lower()]
    return tuple(picked + projectors[:1])


def missing(files: Iterable[RepoFile], blobs_present: Iterable[str]) -> tuple[RepoFile, ...]:
    """The files whose blob the cache does not hold yet (a blob is only ever there whole)."""
    present = set(blobs_present)
    return tuple(f for f in files if f.blob not in present)
