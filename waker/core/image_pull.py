"""An image pull as users see it: Docker's pull stream folded into layers and bytes, done and total.

Pure: `PullTracker.feed` takes the stream's messages as Docker sends them; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from waker.config.units import format_bytes
from waker.errors import PullFailed


@dataclass(frozen=True, slots=True)
class PullProgress:
    image: str
    layers_done: int = 0
    layers_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0  # of the layers whose size Docker has reported so far

    def describe(self) -> str:
        """One line for people: `waker status`, the dashboard, the loading feedback."""
        sizes = f", {format_bytes(self.bytes_done)} of {format_bytes(self.bytes_total)}" if self.bytes_total else ""
        return f"pulling {self.image}: {self.layers_done}/{self.layers_total} layers{sizes}"


_LAYER_SEEN = {
    "Pulling fs layer",
    "Waiting",
    "Downloading",
    "Verifying Checksum",
    "Download complete",
    "Extracting",
    "Pull complete",
    "Already exists",
}
_LAYER_DONE = {"Pull complete", "Already exists"}


@dataclass
class _Layer:
    done: bool = False
    current: int = 0
    total: int = 0


@dataclass
class PullTracker:
    image: str
    _layers: dict[str, _Layer] = field(default_factory=dict)

    def feed(self, message: dict[str, Any]) -> None:
        """Takes one message of Docker's pull stream; raises PullFailed for an error message (Docker
        reports a failed pull inside a 200 stream)."""
        if "error" in message:
            detail = message.get("errorDetail") or {}
            raise PullFailed(str(detail.get("message") or message["error"]))
        status, layer_id = message.get("status", ""), message.get("id", "")
        if status not in _LAYER_SEEN or not layer_id:
            return  # "Pulling from ...", "Digest: ...", "Status: ...": about the image, not a layer
        layer = self._layers.setdefault(layer_id, _Layer())
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            layer.current, layer.total = int(detail.get("current", 0)), int(detail["total"])
        elif status in ("Download complete", "Extracting", "Pull complete") and layer.total:
            layer.current = layer.total
        layer.done = layer.done or status in _LAYER_DONE

    def snapshot(self) -> PullProgress:
        layers = self._layers.values()
        return PullProgress(
            self.image,
            sum(layer.done for layer in layers),
            len(self._layers),
            sum(layer.current for layer in layers),
            sum(layer.total for layer in layers),
        )
