"""A model's weights fetched from the Hugging Face hub into the cache its engine reads, with
`huggingface_hub` (the library the engines load them with), in the cache's own layout
(`models--org--name/{blobs,snapshots,refs}`), so that the engine then starts offline.

Blocking: run it in a thread. Each file goes to `blobs/<id>.<random>.incomplete` and is renamed when
whole; a file is only ever complete or absent, so a fetch cut short (a crash, a `kill -9`) starts
again from the files that are missing, and the next plan removes the partial files it left. The
branch's ref is written last: until every file is there,
an offline engine does not take the snapshot for a complete one.

`huggingface_hub` is imported on the first fetch only: the waker does not carry it while idle.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waker.config.weights import Weights
from waker.core.memory import gib
from waker.core.weights import SAFETENSORS_INDEX, RepoFile, chosen, missing, needs_index
from waker.errors import WeightsError

DISK_MARGIN = 1024**3  # left free beyond what the fetch writes: the box needs its disk too
WORKERS = 8  # files fetched at once, as `hf download` does
ABANDONED = 600.0  # seconds a partial download may go untouched before it is taken for abandoned


@dataclass(frozen=True, slots=True)
class Plan:
    """What fetching `weights` takes: the revision's commit, the files the engine loads, and of those
    the ones the cache lacks."""

    weights: Weights
    commit: str
    files: tuple[RepoFile, ...]
    to_fetch: tuple[RepoFile, ...]
    reclaimed: int = 0  # bytes of partial files an earlier fetch left, removed

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(f.size for f in self.to_fetch)

    @property
    def repo_dir(self) -> Path:
        return Path(self.weights.host_cache) / ("models--" + self.weights.repo.replace("/", "--"))

    @property
    def snapshot(self) -> Path:
        return self.repo_dir / "snapshots" / self.commit


class Hub:
    """The hub the weights come from: `endpoint` (None: huggingface_hub's, `HF_ENDPOINT` or the
    public hub) and the token for gated repositories (None: huggingface_hub's own, `HF_TOKEN`)."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        self.endpoint = endpoint
        self.token = token

    def plan(self, weights: Weights) -> Plan:
        """Asks the hub which commit the revision is and what it holds; reads the safetensors index
        when the choice of shards needs it."""
        api = self._api()
        with _hub_errors(weights):
            commit = api.model_info(weights.repo, revision=weights.branch).sha
            listing = [
                RepoFile(entry.path, entry.size, entry.lfs.sha256 if entry.lfs else entry.blob_id)
                for entry in api.list_repo_tree(weights.repo, revision=commit, recursive=True)
                if hasattr(entry, "size")  # files, not folders
            ]
        weight_map = None
        if needs_index(weights.engine, weights.include, listing):
            index = self._download(weights, commit, SAFETENSORS_INDEX, None)
            weight_map = frozenset(json.loads(Path(index).read_text())["weight_map"].values())
        files = chosen(weights.engine, weights.include, weights.quant, listing, weight_map)
        if not files:
            wanted = f"a GGUF for the tag {weights.quant!r}" if weights.quant else "any file to fetch"
            raise WeightsError(
                404,
                "weights_not_found",
                f"{weights.repo} at {weights.branch} has no {wanted}; files there: "
                f"{', '.join(f.path for f in listing[:20]) or 'none'}",
            )
        blobs = self._blobs(weights)
        return Plan(weights, commit, files, missing(files, blobs), self._reclaim(weights))

    def fetch(self, plan: Plan, on_bytes: Callable[[int], None] = lambda n: None) -> Path:
        """Fetches what the cache lacks, after checking the disk can hold it; returns the snapshot."""
        self.check_disk(plan)
        stop = threading.Event()  # set: the downloads still running end at their next chunk

        def counted(n: int) -> None:
            if stop.is_set():
                raise WeightsError(503, "weights_unavailable", f"the fetch of {plan.weights.repo} was stopped")
            on_bytes(n)

        pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="weights")
        try:
            futures = [pool.submit(self._download, plan.weights, plan.commit, f.path, counted) for f in plan.files]
            for future in as_completed(futures):
                future.result()  # the first failure ends the fetch, not the last file's end
        except BaseException:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        with _writing(plan.weights):
            _write_ref(plan.repo_dir, plan.weights.branch, plan.commit)
        return plan.snapshot

    @staticmethod
    def link_download_dir(plan: Plan) -> str | None:
        """vLLM running online reads its weights in its `--download-dir` cache, not in the one filled:
        the snapshot is laid out there too, its blobs hard links (no second copy). Returns why it could
        not be (another filesystem: vLLM would then download them again unless it runs offline)."""
        target = plan.weights.download_dir_host
        if not target or Path(target) == Path(plan.weights.host_cache):
            return None
        repo_dir = Path(target) / plan.repo_dir.name
        blobs, snapshot = repo_dir / "blobs", repo_dir / "snapshots" / plan.commit
        try:
            blobs.mkdir(parents=True, exist_ok=True)
            for file in plan.files:
                blob = blobs / file.blob
                if not blob.exists():
                    os.link(plan.repo_dir / "blobs" / file.blob, blob)
                link = snapshot / file.path
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.unlink(missing_ok=True)  # a file left there by hand
                    link.symlink_to(os.path.relpath(blob, link.parent))
            _write_ref(repo_dir, plan.weights.branch, plan.commit)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return f"cannot link the files into {target}: it is on another filesystem"
            return f"cannot write {exc.filename or target}: {exc.strerror}"
        return None

    @staticmethod
    def check_disk(plan: Plan) -> None:
        need = plan.bytes_to_fetch
        if not need:
            return
        where = Path(plan.weights.host_cache)
        while not where.exists():
            where = where.parent
        free = shutil.disk_usage(where).free
        if free < need + DISK_MARGIN:
            raise WeightsError(
                503,
                "insufficient_disk",
                f"{plan.weights.repo} needs {gib(need)} more in {plan.weights.host_cache}, whose disk has "
                f"{gib(free)} free (and {gib(DISK_MARGIN)} is kept free): free space there, or mount a "
                "larger disk as the model's cache",
            )

    def _api(self) -> Any:
        _quiet()
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    def _download(self, weights: Weights, commit: str, path: str, on_bytes: Callable[[int], None] | None) -> str:
        _quiet()
        from huggingface_hub import hf_hub_download

        with _hub_errors(weights):
            return str(
                hf_hub_download(
                    weights.repo,
                    path,
                    revision=commit,
                    cache_dir=weights.host_cache,
                    token=self.token,
                    endpoint=self.endpoint,
                    tqdm_class=_counting(on_bytes) if on_bytes is not None else None,
                )
            )

    @staticmethod
    def _reclaim(weights: Weights) -> int:
        """Removes the partial files a fetch cut short left (a crash, a `kill -9`): huggingface_hub
        names each download's anew and never resumes them. One untouched for ABANDONED seconds is
        no download's any more (a live one writes every few seconds). Returns the bytes freed."""
        blobs = Path(weights.host_cache) / ("models--" + weights.repo.replace("/", "--")) / "blobs"
        freed = 0
        for partial in blobs.glob("*.incomplete") if blobs.is_dir() else ():
            with _writing(weights):
                stat = partial.stat()
                if time.time() - stat.st_mtime > ABANDONED:
                    partial.unlink(missing_ok=True)
                    freed += stat.st_size
        return freed

    @staticmethod
    def _blobs(weights: Weights) -> list[str]:
        """The blobs the cache holds for the repository: whole ones only (a blob gets its name when
        whole; until then it is `<name>.<random>.incomplete`)."""
        blobs = Path(weights.host_cache) / ("models--" + weights.repo.replace("/", "--")) / "blobs"
        return [b.name for b in blobs.iterdir() if not b.name.endswith(".incomplete")] if blobs.is_dir() else []


@contextmanager
def _writing(weights: Weights) -> Iterator[None]:
    """An OSError writing the cache as a WeightsError that names the place."""
    try:
        yield
    except OSError as exc:
        raise _unwritable(weights, exc) from None


def _unwritable(weights: Weights, exc: OSError) -> WeightsError:
    return WeightsError(
        503,
        "weights_unwritable",
        f"cannot write {exc.filename or weights.host_cache}: {exc.strerror}; the weights of {weights.repo} go "
        "there: run waker pull as a user who may write it (the engines' containers, running as root, may "
        "have made it root's)",
    )


def _write_ref(repo_dir: Path, branch: str, commit: str) -> None:
    """The branch's commit, written whole (a reader sees the old ref or the new one)."""
    if branch == commit:
        return
    ref = repo_dir / "refs" / branch  # a branch may hold slashes: refs/pr/3, release/v1
    ref.parent.mkdir(parents=True, exist_ok=True)
    partial = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    partial.write_text(commit)
    os.replace(partial, ref)


def _quiet() -> None:
    """Before huggingface_hub is first imported (it reads its settings then): no telemetry call, which
    is an HTTP round trip at each process's first request (3 s lost on a box without internet)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _counting(on_bytes: Callable[[int], None]) -> type:
    """A progress-bar class huggingface_hub drives (one per file) that counts the bytes, shows nothing."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Counting(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            on_bytes(int(n or 0))
            return None

    return Counting


class _hub_errors:  # lower case: it reads as a function where it is used
    """huggingface_hub's errors as WeightsError, saying what to do."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> None:
        if exc is None or isinstance(exc, WeightsError):
            return
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo, branch = self.weights.repo, self.weights.branch
        if isinstance(exc, GatedRepoError):
            raise WeightsError(
                503,
                "weights_unauthorized",
                f"{repo} is gated: accept its licence on its page on the hub with your account, and give the "
                "waker that account's token (HF_TOKEN, or [waker] hf_token_file)",
            ) from None
        if isinstance(exc, RevisionNotFoundError):
            raise WeightsError(404, "weights_not_found", f"{repo} has no revision {branch!r}") from None
        if isinstance(exc, RepositoryNotFoundError):
            raise WeightsError(
                404,
                "weights_not_found",
                f"{repo} is not on the hub, or is private: check the name, or give the waker a token that "
                "may read it (HF_TOKEN, or [waker] hf_token_file)",
            ) from None
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, HfHubHTTPError) and status in (401, 403):
            raise WeightsError(
                503,
                "weights_unauthorized",
                f"the hub refused {repo} ({status}): give the waker a token that may read it "
                "(HF_TOKEN, or [waker] hf_token_file)",
            ) from None
        from httpx2 import HTTPError  # huggingface_hub's HTTP client: a refused connect, a timeout

        if isinstance(exc, OSError) and exc.errno is not None:  # the cache's disk, not the network
            raise _unwritable(self.weights, exc) from None
        if isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError, HTTPError, OSError)):
            raise WeightsError(
                503, "weights_unavailable", f"cannot fetch {repo} from the hub: {exc}; check the network"
            ) from None
