"""Manual control of the models (what the admin API offers): stop, pin, unload, reload, and waiting
for a state. Mixed into the Supervisor, whose state it works on."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from waker.activity import ModelActivity
from waker.config import Config, ModelConfig
from waker.errors import AdminError, RequestRefused
from waker.lifecycle import Event, State
from waker.scheduler import OCCUPYING, Policy, Slot


class ManualControl:
    """Works on the Supervisor's state (slots, queue, config) through the Supervisor's own helpers."""

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, model_id: str, states: tuple[State, ...], timeout: float) -> bool:
        """Waits until the model is in one of `states`; False if `timeout` passed first."""
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.slots[model_id].state in states)
        try:
            await asyncio.wait_for(reached(), timeout)
            return True
        except TimeoutError:
            return False

    # ---- manual control (the admin API) ---------------------------------------------------------

    def stop_by_hand(self, model_id: str, force: bool = False, reason: str = "manual") -> str:
        """Stops a model now; returns what happened. A keep_warm model stays down until asked for.
        `reason` names who asked, in the stop's event and metrics ("client": a client's unload)."""
        slot = self.current_slots()[model_id]
        if slot.state is State.FAILED:
            self._transition(model_id, Event.RESET, failures=0, retry_at=0.0)
            self.reconcile()
            return "failure cleared"
        if slot.state in (State.STOPPED, State.STOPPING):
            return f"already {slot.state.value}"
        if slot.state is State.STARTING:
            raise AdminError(409, f"model {model_id!r} is starting; stop it once it is ready")
        if slot.in_flight and not force:
            raise AdminError(409, f"model {model_id!r} has {slot.in_flight} request(s) in flight; "
                                  "stopping it would cut them off (force=true does it anyway)")
        self.slots[model_id] = replace(self.slots[model_id], suspended=slot.keep_warm)
        self._stop(model_id, reason)
        return "stopping"

    def set_pinned(self, model_id: str, pinned: bool) -> None:
        self.slots[model_id] = replace(self.slots[model_id], pinned=pinned)
        self.bus.publish("model_pinned" if pinned else "model_unpinned", model=model_id)
        self.reconcile()

    def reload(self, new: Config) -> dict[str, list[str]]:
        """Takes a new config in without stopping what keeps running; returns the models added,
        changed and removed. Raises AdminError, changing nothing, for what cannot change live."""
        old, current = self.config, self.current_slots()
        problems = [f"[waker] {key} changed: restart the waker to apply it"
                    for key in ("listen", "name", "docker_host", "runtime_dir", "network", "model_ip_base",
                                "egress_network")
                    if getattr(old.waker, key) != getattr(new.waker, key)]
        for model in new.models:
            before = old.model(model.id)
            if before and current[model.id].state in OCCUPYING and before.address != model.address:
                problems.append(f"model {model.id!r} runs at {before.address} and the new config moves it to "
                                f"{model.address}: keep its position (add new models at the end; with host ports, "
                                f"set host_port = {before.host_port}), or stop it first")
        removed = [m for m in old.models if new.model(m.id) is None]
        for model in removed:
            if current[model.id].in_flight or current[model.id].state is State.STARTING:
                problems.append(f"model {model.id!r} is removed but is busy ({current[model.id].state.value}, "
                                f"{current[model.id].in_flight} request(s) in flight); retry when it is idle")
        if problems:
            raise AdminError(409, "the new config cannot be applied live: " + "; ".join(problems))

        s = new.scheduler
        self.config = new
        self.policy = Policy(s.gpu_capacity, s.on_busy, s.queue_timeout, s.max_start_failures, s.start_backoff)
        changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": [m.id for m in removed]}
        for model in new.models:
            before = old.model(model.id)
            if before is None:
                self.slots[model.id] = replace(slot_for(model), since=self.now())
                self.activity[model.id], self._died[model.id] = ModelActivity(), asyncio.Event()
                changes["added"].append(model.id)
            elif before != model:
                fresh = slot_for(model)
                self.slots[model.id] = replace(self.slots[model.id], gpu_memory=fresh.gpu_memory,
                                               exclusive=fresh.exclusive, keep_warm=fresh.keep_warm,
                                               idle_timeout=fresh.idle_timeout, min_uptime=fresh.min_uptime)
                changes["changed"].append(model.id)
        for model in removed:
            for waiter in [w for w in self.queue.values() if w.model == model.id]:
                self._answer(waiter.id, RequestRefused(404, "model_not_found", f"model {model.id!r} was removed"))
            if current[model.id].state is State.READY:
                self._transition(model.id, Event.STOP)
                self._spawn(self._run_stop(model, "removed"))
            elif current[model.id].state is not State.STOPPING:
                self._forget(model.id)
        self.bus.publish("config_reloaded", **changes)
        self.reconcile()
        return changes

    def _forget(self, model_id: str) -> None:
        for table in (self.slots, self.activity, self._died):
            table.pop(model_id, None)

    def unload(self, force: bool = False) -> dict[str, str]:
        """Stops every running model that is not pinned; busy ones only with `force`."""
        outcome = {}
        for model_id, slot in self.current_slots().items():
            if slot.state is State.READY and not slot.pinned:
                try:
                    outcome[model_id] = self.stop_by_hand(model_id, force)
                except AdminError as exc:
                    outcome[model_id] = f"skipped: {exc.message}"
        return outcome


def slot_for(model: ModelConfig) -> Slot:
    """The scheduler's view of a configured model, before anything has happened to it."""
    return Slot(id=model.id, gpu_memory=model.gpu_memory, exclusive=model.exclusive, keep_warm=model.keep_warm,
                idle_timeout=model.idle_timeout, min_uptime=model.min_uptime)
