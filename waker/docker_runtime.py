"""The Docker engine, seen through the few calls the waker makes (aiodocker).

Only containers carrying this stack's managed labels are ever acted on: every call that changes a
container checks the labels first, so the waker cannot stop or remove anything it did not create.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiodocker

from waker.container_spec import LABEL_MANAGED, LABEL_MODEL, LABEL_SPEC, LABEL_STACK


class DockerError(Exception):
    """A Docker call failed; the message says what and, where it can, what to do."""


class ImageMissing(DockerError):
    pass


class NotManaged(DockerError):
    pass


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str
    model_id: str
    spec_hash: str
    running: bool
    status: str
    exit_code: int
    error: str


class DockerRuntime:
    def __init__(self, stack: str, docker_host: str = "") -> None:
        self.stack = stack
        self._docker = aiodocker.Docker(url=docker_host or None)

    async def close(self) -> None:
        await self._docker.close()

    async def ping(self) -> None:
        try:
            await self._docker._query_json("_ping", method="GET", response_type="text")
        except (aiodocker.DockerError, OSError) as exc:
            raise DockerError(f"the Docker engine is not reachable: {exc}") from None

    async def managed_containers(self) -> list[ContainerInfo]:
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={self.stack}"]}
        try:
            listed = await self._docker.containers.list(all=True, filters=filters)
        except (aiodocker.DockerError, OSError) as exc:
            raise DockerError(f"cannot list containers: {exc}") from None
        return [await self._inspect(c.id) for c in listed]

    async def find(self, model_id: str) -> ContainerInfo | None:
        filters = {
            "label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={self.stack}", f"{LABEL_MODEL}={model_id}"]
        }
        try:
            listed = await self._docker.containers.list(all=True, filters=filters)
        except (aiodocker.DockerError, OSError) as exc:
            raise DockerError(f"cannot list containers: {exc}") from None
        return await self._inspect(listed[0].id) if listed else None

    async def inspect(self, container_id: str) -> ContainerInfo:
        return await self._inspect(container_id)

    async def check_image(self, image: str) -> None:
        try:
            await self._docker.images.inspect(image)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ImageMissing(
                    f"image {image!r} is not present on this Docker host; pull it (docker pull {image}) "
                    "or build it (scripts/build-images), then retry"
                ) from None
            raise DockerError(f"cannot inspect image {image!r}: {exc.message}") from None

    async def create(self, name: str, spec: dict[str, Any]) -> str:
        try:
            container = await self._docker.containers.create(config=spec, name=name)
        except aiodocker.DockerError as exc:
            raise DockerError(f"cannot create container {name!r}: {exc.message}") from None
        return container.id

    async def start(self, container_id: str) -> None:
        await self._inspect(container_id)  # raises NotManaged
        try:
            await self._docker.containers.container(container_id).start()
        except aiodocker.DockerError as exc:
            raise DockerError(f"cannot start container {container_id[:12]}: {exc.message}") from None

    async def stop(self, container_id: str, timeout: float) -> None:
        await self._inspect(container_id)  # raises NotManaged
        try:
            await self._docker.containers.container(container_id).stop(t=max(0, round(timeout)))
        except aiodocker.DockerError as exc:
            if exc.status not in (304, 404):
                raise DockerError(f"cannot stop container {container_id[:12]}: {exc.message}") from None

    async def remove(self, container_id: str) -> None:
        await self._inspect(container_id)  # raises NotManaged
        try:
            await self._docker.containers.container(container_id).delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise DockerError(f"cannot remove container {container_id[:12]}: {exc.message}") from None

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        try:
            chunks = await self._docker.containers.container(container_id).log(
                stdout=True, stderr=True, tail=lines
            )
        except aiodocker.DockerError:
            return ""
        return "".join(chunks).strip()

    async def _inspect(self, container_id: str) -> ContainerInfo:
        try:
            data = await self._docker.containers.container(container_id).show()
        except aiodocker.DockerError as exc:
            raise DockerError(f"cannot inspect container {container_id[:12]}: {exc.message}") from None
        labels = data["Config"].get("Labels") or {}
        if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_STACK) != self.stack:
            raise NotManaged(
                f"container {data['Name'].lstrip('/')} is not managed by waker stack {self.stack!r}; "
                "the waker never acts on containers it did not create"
            )
        state = data["State"]
        return ContainerInfo(
            id=data["Id"],
            name=data["Name"].lstrip("/"),
            model_id=labels.get(LABEL_MODEL, ""),
            spec_hash=labels.get(LABEL_SPEC, ""),
            running=bool(state.get("Running")),
            status=state.get("Status", ""),
            exit_code=int(state.get("ExitCode") or 0),
            error=state.get("Error") or "",
        )
