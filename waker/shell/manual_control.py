"""Manual control of the models, what the admin API (and a client's unload) asks for: stop, sleep, pin,
unload, and a live reload of the config. Works on the supervisor through its commands, never on its
state directly."""

from __future__ import annotations

from contextlib import nullcontext
from enum import StrEnum

from waker.config.schema import load_config
from waker.core.lifecycle import SleepReason, State, StopReason
from waker.core.reload import ConfigChange, plan_reload
from waker.errors import AdminError
from waker.nginx.process import Nginx
from waker.shell.supervisor import Supervisor


class StopOutcome(StrEnum):
    STOPPING = "stopping"
    FAILURE_CLEARED = "failure cleared"
    ALREADY_STOPPED = "already stopped"
    ALREADY_STOPPING = "already stopping"


class SleepOutcome(StrEnum):
    FALLING_ASLEEP = "falling asleep"
    ALREADY_ASLEEP = "already asleep"


class ManualControl:
    def __init__(self, supervisor: Supervisor, nginx: Nginx | None = None) -> None:
        self.supervisor = supervisor
        self.nginx = nginx

    def stop_by_hand(self, model_id: str, force: bool = False, reason: StopReason = StopReason.MANUAL) -> StopOutcome:
        """Stops a model now; returns what happened. A keep_warm model stays down until asked for.
        Stopping a failed model clears its failure and back-off, and any stop its failed wakes."""
        slot = self.supervisor.current_slots()[model_id]
        if slot.wake_failures:
            self.supervisor.forget_wake_failures(model_id)
        if slot.state is State.FAILED:
            self.supervisor.reset_failure(model_id)
            return StopOutcome.FAILURE_CLEARED
        if slot.state is State.STOPPED:
            return StopOutcome.ALREADY_STOPPED
        if slot.state is State.STOPPING:
            return StopOutcome.ALREADY_STOPPING
        if slot.state is State.STARTING:
            raise AdminError(409, f"model {model_id!r} is starting; stop it once it is ready")
        if slot.state in (State.FALLING_ASLEEP, State.WAKING):
            raise AdminError(
                409,
                f"model {model_id!r} is {slot.state.value.replace('_', ' ')}; stop it in a few "
                "seconds, once it is asleep or ready",
            )
        if slot.in_flight and not force:
            raise AdminError(
                409,
                f"model {model_id!r} has {slot.in_flight} request(s) in flight; "
                "stopping it would cut them off (force=true does it anyway)",
            )
        self.supervisor.stop(model_id, reason, suspend=slot.keep_warm)
        return StopOutcome.STOPPING

    def sleep_by_hand(self, model_id: str) -> SleepOutcome:
        """Puts a ready, idle model to sleep now (the admin API, `waker sleep`)."""
        slot = self.supervisor.current_slots()[model_id]
        if slot.state is State.SLEEPING:
            return SleepOutcome.ALREADY_ASLEEP
        if slot.sleep_level == 0:
            why = (
                "its config has sleep = 0: set sleep = 1 or 2 to let it sleep"
                if self.supervisor.gate is not None
                else "sleep mode is off, as the waker does not route nginx (--nginx none): stop it instead"
            )
            raise AdminError(409, f"model {model_id!r} cannot sleep: {why}")
        if slot.state is not State.READY:
            raise AdminError(
                409,
                f"model {model_id!r} is {slot.state.value.replace('_', ' ')}; only a ready model can be put to sleep",
            )
        if slot.in_flight:
            raise AdminError(
                409,
                f"model {model_id!r} has {slot.in_flight} request(s) in flight; sleeping would "
                "abort them: retry once it is idle",
            )
        self.supervisor.put_to_sleep(model_id, SleepReason.MANUAL)
        return SleepOutcome.FALLING_ASLEEP

    def set_pinned(self, model_id: str, pinned: bool) -> None:
        self.supervisor.pin(model_id, pinned)

    def unload(self, force: bool = False) -> dict[str, str]:
        """Stops every running model that is not pinned; busy ones only with `force`."""
        outcome = {}
        for model_id, slot in self.supervisor.current_slots().items():
            if slot.state in (State.READY, State.SLEEPING) and not slot.pinned:
                try:
                    outcome[model_id] = self.stop_by_hand(model_id, force).value
                except AdminError as exc:
                    outcome[model_id] = f"skipped: {exc.message}"
        return outcome

    async def reload(self) -> ConfigChange:
        """Reads the config file again and applies it live, all or nothing: the new config is read
        (ConfigError), nginx checks its rendering (NginxError), the change is checked against what
        runs (AdminError), nginx reloads (NginxError: nginx keeps serving the old one), and only then
        does the supervisor take it in, so nginx and the supervisor never disagree. The reload keeps
        the gates of sleeping models closed, and no gate is routed meanwhile."""
        supervisor = self.supervisor
        new = load_config(supervisor.config.path, supervisor.config.overrides)
        if self.nginx is not None:
            await self.nginx.check(new)
        change = plan_reload(supervisor.config, new, supervisor.current_slots())
        if self.nginx is None:
            supervisor.apply_config(new, change)
            return change
        # Without sleep mode nothing is gated, and no gate is routed meanwhile.
        gate = supervisor.gate.reloading() if supervisor.gate is not None else nullcontext(frozenset[str]())
        async with gate as gated:
            await self.nginx.reload(new, gated)
            supervisor.apply_config(new, change)
        return change
