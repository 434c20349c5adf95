"""Requests held until their model is ready: the scheduler's queue, and each one's answer to come.

Waiters are kept in arrival order (the scheduler serves them FIFO) and by id, so answering one is O(1)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from waker.core.plan import Waiter
from waker.errors import RequestRefused


class WaitingRoom:
    def __init__(self) -> None:
        self._waiters: dict[int, Waiter] = {}
        self._answers: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0

    def enter(self, model_id: str, now: float) -> tuple[Waiter, asyncio.Future[None]]:
        waiter = Waiter(self._next_id, model_id, now)
        self._next_id += 1
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter.id], self._answers[waiter.id] = waiter, answer
        return waiter, answer

    def answer(self, waiter_id: int, error: RequestRefused | None) -> Waiter:
        """Lets the waiter in (no error) or refuses it; it leaves the room either way."""
        waiter = self._waiters.pop(waiter_id)
        answer = self._answers.pop(waiter_id)
        if error is None:
            answer.set_result(None)
        else:
            answer.set_exception(error)
        return waiter

    def leave(self, waiter: Waiter) -> bool:
        """A waiter gone before its answer (its client hung up); False if it had been answered."""
        if self._waiters.pop(waiter.id, None) is None:
            return False
        del self._answers[waiter.id]
        return True

    def waiting(self) -> tuple[Waiter, ...]:
        return tuple(self._waiters.values())

    def for_model(self, model_id: str) -> list[Waiter]:
        return [w for w in self._waiters.values() if w.model == model_id]

    def __len__(self) -> int:
        return len(self._waiters)

    def __bool__(self) -> bool:
        return bool(self._waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self._waiters.values()))
