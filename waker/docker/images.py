"""A model's image, made present on the Docker host as its `pull` policy says.

One pull per image at a time, whoever asks: every start waiting for the same image shares it, and a
start that gives up (its start_timeout passed) leaves the pull running for the others. Progress is
reported while it runs, so users see layers and bytes instead of a silent wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from waker.config.schema import ModelConfig, PullPolicy
from waker.core.image_pull import PullProgress
from waker.docker import registry_auth
from waker.docker.runtime import DockerRuntime
from waker.errors import DockerError, ImageMissing, ImagePullFailed

log = structlog.get_logger("waker.docker.images")

PROGRESS_INTERVAL = 0.5  # seconds between two progress reports of one pull (the last one always goes)
Report = Callable[[str, PullProgress], None]  # image, progress


def how_to_get(image: str) -> str:
    """What a user runs to put `image` on the host."""
    if image.startswith("waker/"):
        return f"build it (scripts/build-images builds every waker/ image) or pull it (docker pull {image})"
    return f'pull it (docker pull {image}), or set pull = "missing" so that its first start pulls it'


class Images:
    def __init__(
        self,
        runtime: DockerRuntime,
        report: Report,
        clock: Callable[[], float] = time.monotonic,
        credentials: Callable[[str], dict[str, str] | None] = registry_auth.credentials,
    ) -> None:
        self.runtime = runtime
        self.report = report
        self.clock = clock
        self.credentials = credentials
        self.pulling: dict[str, PullProgress] = {}  # by image, while its pull runs
        self._pulls: dict[str, asyncio.Task[None]] = {}

    async def ensure(self, model: ModelConfig) -> str:
        """The id of the model's image once it is present; raises ImageMissing or ImagePullFailed."""
        present = await self.runtime.image_id(model.image)
        if model.pull is PullPolicy.NEVER or (model.pull is PullPolicy.MISSING and present is not None):
            if present is None:
                raise ImageMissing(
                    f"image {model.image!r} is not on this Docker host and model {model.id!r} "
                    f'has pull = "never": {how_to_get(model.image)}'
                )
            return present
        try:
            await asyncio.shield(self._pull(model.image))
        except DockerError as exc:
            if present is None:
                raise ImagePullFailed(f"{exc}; {how_to_get(model.image)}") from None
            log.warning("image_pull_failed_using_local", model=model.id, image=model.image, error=str(exc))
            return present
        pulled = await self.runtime.image_id(model.image)
        if pulled is None:
            raise ImagePullFailed(
                f"image {model.image!r} was pulled but is not on the host: pulled by another name, or removed since"
            )
        return pulled

    def _pull(self, image: str) -> asyncio.Task[None]:
        task = self._pulls.get(image)
        if task is None:
            task = asyncio.ensure_future(self._run_pull(image))
            self._pulls[image] = task
            task.add_done_callback(lambda _: self._pulls.pop(image, None))
        return task

    async def _run_pull(self, image: str) -> None:
        began, last = self.clock(), 0.0
        self.pulling[image] = PullProgress(image)
        log.info("image_pull_started", image=image)

        def progress(snapshot: PullProgress) -> None:
            nonlocal last
            self.pulling[image] = snapshot
            if self.clock() - last >= PROGRESS_INTERVAL:
                last = self.clock()
                self.report(image, snapshot)

        auth = await asyncio.to_thread(self.credentials, image) if "/" in image else None
        try:
            await self.runtime.pull(image, auth, progress)
        finally:
            final = self.pulling.pop(image)
        self.report(image, final)
        log.info(
            "image_pulled",
            image=image,
            seconds=round(self.clock() - began, 1),
            layers=final.layers_total,
            bytes=final.bytes_total,
        )
