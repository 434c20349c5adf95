"""The engines models run on: one `Driver` per host (`[[host]]`, or the one local engine), and which
one a model's calls go to. A model on one host is that host's driver's; a model spread over two hosts
(a Ray head here, a worker there) is a pair's, made by the `pair` factory from the two hosts."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from waker.core.driver import Driver, HostDriver
from waker.core.image_pull import PullProgress

PairFactory = Callable[[str, str], Driver]  # (head host, worker host) -> the driver of the pair


class Fleet:
    def __init__(self, drivers: Mapping[str, HostDriver], pair: PairFactory | None = None) -> None:
        assert drivers, "a fleet has at least one host"
        self.drivers = dict(drivers)
        self._pair = pair
        self._pairs: dict[tuple[str, str], Driver] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.drivers)

    def of(self, hosts: tuple[str, ...]) -> Driver:
        """The driver for a model on `hosts` (the head first); () is the first host."""
        if len(hosts) < 2:
            return self.drivers[hosts[0] if hosts else self.names[0]]
        head, worker = hosts[0], hosts[1]
        if (head, worker) not in self._pairs:
            if self._pair is None:
                raise ValueError("this waker runs no model over two hosts")
            self._pairs[head, worker] = self._pair(head, worker)
        return self._pairs[head, worker]

    def pulling(self, image: str) -> PullProgress | None:
        """The pull of `image` in progress on any host."""
        return next((p for d in self.drivers.values() if (p := d.pulling(image)) is not None), None)

    async def close(self) -> None:
        for driver in self.drivers.values():
            await driver.close()
