"""The imperative shell around the scheduler: holds the state, feeds it to `scheduler.decide`, and
carries out the plan (container starts and stops, answers to waiting requests).

Inputs: wake requests from nginx (`acquire`), activity marks from nginx (`on_activity`), the Docker
events stream, and timers that `decide` asks for. Nothing polls: at idle the waker sleeps.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, replace
from typing import Any

import structlog

from waker import docker_events
from waker.activity import Mark, ModelActivity
from waker.config import Config, ModelConfig
from waker.container_spec import LABEL_MODEL
from waker.control import ManualControl, slot_for
from waker.docker_runtime import DockerError, DockerRuntime
from waker.errors import RequestRefused
from waker.events import EventBus
from waker.image_pull import PullProgress
from waker.images import Images
from waker.launcher import LOG_TAIL_LINES, Launcher, StartError
from waker.lifecycle import Event, State, next_state
from waker.scheduler import Grant, Plan, Policy, Refuse, Slot, Start, Stop, Waiter, decide

log = structlog.get_logger("waker.supervisor")

STOP_RETRY_SECONDS = 5.0


class Supervisor(ManualControl):
    def __init__(self, config: Config, runtime: DockerRuntime, bus: EventBus) -> None:
        self.config = config
        self.runtime = runtime
        self.bus = bus
        self.launcher = Launcher(config.waker, runtime, Images(runtime, self._on_pull_progress), self.now)
        s = config.scheduler
        self.policy = Policy(s.gpu_capacity, s.on_busy, s.queue_timeout, s.max_start_failures, s.start_backoff)
        self.slots: dict[str, Slot] = {m.id: slot_for(m) for m in config.models}
        self.containers: dict[str, str] = {}
        self.queue: dict[int, Waiter] = {}  # in arrival order; by id, so answering one is O(1)
        self.docker_error: str | None = "not connected yet"
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._next_waiter = 0
        self.activity: dict[str, ModelActivity] = {m.id: ModelActivity() for m in config.models}
        self._died: dict[str, asyncio.Event] = {m.id: asyncio.Event() for m in config.models}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._reconcile_pending = False
        self._synced = False
        self._changed = asyncio.Condition()

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    async def open(self) -> None:
        self._spawn(docker_events.follow(self.runtime, self._on_docker_event, self._resync, self._on_docker_lost))

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.launcher.close()

    # ---- requests -------------------------------------------------------------------------------

    async def acquire(self, model: ModelConfig) -> None:
        """Returns when `model` is ready to serve; raises RequestRefused otherwise. nginx only asks
        when it could not reach the model, so a model believed ready is checked first."""
        if self.slots[model.id].suspended:
            self.slots[model.id] = replace(self.slots[model.id], suspended=False)
        if self.slots[model.id].state is State.READY:
            if await self.launcher.healthy(model):
                return
            if self.slots[model.id].state is State.READY:
                self.bus.publish("model_unreachable", model=model.id)
                self._stop(model.id, "unreachable")
        waiter = Waiter(self._next_waiter, model.id, self.now())
        self._next_waiter += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue[waiter.id] = waiter
        self._futures[waiter.id] = future
        self.bus.publish("request_queued", model=model.id, waiter=waiter.id, queue_length=len(self.queue))
        self._reconcile_soon()  # a burst of requests makes one decision, not one each
        try:
            await future
        except asyncio.CancelledError:
            if waiter.id in self.queue:  # the client went away while queued: forget it, start nothing for it
                self._drop(waiter)
                self.bus.publish("request_abandoned", model=model.id, waiter=waiter.id)
                self.reconcile()
            raise

    def on_activity(self, mark: Mark) -> None:
        """Hot path (every model request, twice): bookkeeping only, and a decision only when one
        may be due: someone waits for room, or the model just went idle and no timer covers it."""
        activity = self.activity.get(mark.model)
        if activity is None:
            return
        now = self.now()
        if mark.kind == "begin":
            activity.begin(mark.request, now)
            return
        activity.end(mark.request, now)
        due = now + self.slots[mark.model].idle_timeout
        if self.queue or (not activity.requests and (self._timer is None or self._timer.when() > due)):
            self._reconcile_soon()

    def _on_pull_progress(self, image: str, progress: PullProgress) -> None:
        models = [m.id for m in self.config.models if m.image == image]
        self.bus.publish("image_pull", image=image, models=models, layers_done=progress.layers_done,
                         layers_total=progress.layers_total, bytes_done=progress.bytes_done,
                         bytes_total=progress.bytes_total)

    # ---- the plan -------------------------------------------------------------------------------

    def reconcile(self) -> None:
        self._reconcile_pending = False
        if not self._synced:
            return  # until Docker has told us what runs, deciding would be guessing
        now = self.now()
        plan = decide(self.current_slots(), tuple(self.queue.values()), self.policy, now)
        self._carry_out(plan)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if plan.wake_at is not None:
            self._timer = asyncio.get_running_loop().call_at(plan.wake_at, self.reconcile)

    def _reconcile_soon(self) -> None:
        if not self._reconcile_pending:
            self._reconcile_pending = True
            asyncio.get_running_loop().call_soon(self.reconcile)

    def current_slots(self) -> dict[str, Slot]:
        """The slots with what the activity marks say merged in, as `decide` needs them."""
        slots = {}
        for model_id, slot in self.slots.items():
            activity = self.activity[model_id]
            slots[model_id] = replace(slot, in_flight=activity.in_flight, oldest_request_since=activity.oldest,
                                      last_active=max(slot.last_active, activity.last_end),
                                      mean_request_seconds=activity.mean_seconds)
        return slots

    def _carry_out(self, plan: Plan) -> None:
        for action in plan.actions:
            if isinstance(action, Start):
                self._transition(action.model, Event.START, starting_since=self.now())
                self._spawn(self._run_start(self._model(action.model)))
            elif isinstance(action, Stop):
                self._stop(action.model, action.reason)
            elif isinstance(action, Grant):
                self._answer(action.waiter, None)
            elif isinstance(action, Refuse):
                details = {"holders": [asdict(h) for h in action.holders]} if action.holders else {}
                self._answer(action.waiter, RequestRefused(action.status, action.code, action.message,
                                                           action.retry_after, details))

    def _answer(self, waiter_id: int, error: RequestRefused | None) -> None:
        waiter = self.queue[waiter_id]
        future = self._drop(waiter)
        if error is not None:
            self.bus.publish("request_refused", model=waiter.model, status=error.status, error=error.message)
            future.set_exception(error)
        else:
            future.set_result(None)

    def _drop(self, waiter: Waiter) -> asyncio.Future[None]:
        del self.queue[waiter.id]
        return self._futures.pop(waiter.id)

    def _transition(self, model_id: str, event: Event, **changes: Any) -> None:
        slot = self.slots[model_id]
        state = next_state(slot.state, event)
        self.slots[model_id] = replace(slot, state=state, since=self.now(), **changes)
        self.bus.publish("model_state", model=model_id, state=state.value, previous=slot.state.value,
                         trigger=event.value, error=changes.get("last_error") or None)
        self._spawn(self._notify())

    # ---- side effects ---------------------------------------------------------------------------

    async def _run_start(self, model: ModelConfig, container_id: str | None = None) -> None:
        began = self.now()
        died = self._died[model.id]
        died.clear()
        try:
            if container_id is None:
                container_id = await self.launcher.up(model, died)
            else:  # adopting a container that is already running
                await self.launcher.wait_healthy(model, container_id, began + model.start_timeout, died)
        except StartError as exc:
            self._start_failed(model, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the model stuck in "starting"
            log.exception("start_crashed", model=model.id)
            self._start_failed(model, StartError(500, "internal_error", f"model {model.id!r}: the waker failed "
                                                 f"while starting it ({exc!r}); its log has the details"))
        else:
            now = self.now()
            self.containers[model.id] = container_id
            # `failures` stays: a run only counts as good once it ends by our stop, not by a crash.
            self._transition(model.id, Event.READY, ready_since=now, last_active=now, retry_at=0.0,
                             last_error="", expected_start_seconds=now - began)
            self.bus.publish("model_ready", model=model.id, seconds=round(now - began, 3))
        self.reconcile()

    def _start_failed(self, model: ModelConfig, exc: StartError) -> None:
        """A failed run (its start failed, or it crashed while serving): counts towards the back-off
        and answers everyone waiting for the model with the reason."""
        failures = self.slots[model.id].failures + 1
        backoff = failures >= self.policy.max_start_failures
        retry_at = self.now() + self.policy.start_backoff if backoff else 0.0
        self._transition(model.id, Event.FAIL, failures=failures, retry_at=retry_at, last_error=exc.message)
        if backoff:
            self.bus.publish("model_backoff", model=model.id, failures=failures,
                             seconds=self.policy.start_backoff)
        for waiter in [w for w in self.queue.values() if w.model == model.id]:
            self._answer(waiter.id, RequestRefused(exc.status, exc.code, exc.message))

    def _stop(self, model_id: str, reason: str) -> None:
        self._transition(model_id, Event.STOP)
        self._spawn(self._run_stop(self._model(model_id), reason))

    async def _run_stop(self, model: ModelConfig, reason: str) -> None:
        if reason == "idle":
            busy = await self.launcher.busy_requests(model)
            if busy:  # the server is working on requests nginx never told us about (waker restart)
                self._transition(model.id, Event.RESUME, last_active=self.now())
                self.bus.publish("idle_stop_postponed", model=model.id, server_requests=busy)
                self.reconcile()
                return
        try:
            container_id = self.containers.get(model.id) or await self._find(model.id)
            if container_id:
                await self.launcher.down(model, container_id)
        except DockerError as exc:
            log.error("stop_failed", model=model.id, error=str(exc), retry_in=STOP_RETRY_SECONDS)
            await asyncio.sleep(STOP_RETRY_SECONDS)
            self._spawn(self._run_stop(model, reason))
            return
        self._transition(model.id, Event.STOPPED, failures=0)  # a run we ended is a good run
        self.bus.publish("model_stopped", model=model.id, reason=reason)
        if self.config.model(model.id) is None:  # removed by a reload
            self._forget(model.id)
        self.reconcile()

    async def _find(self, model_id: str) -> str | None:
        info = await self.runtime.find(model_id)
        return info.id if info else None

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_coro().__qualname__, error=repr(task.exception()),
                      exc_info=task.exception())

    def _model(self, model_id: str) -> ModelConfig:
        model = self.config.model(model_id)
        assert model is not None
        return model

    # ---- Docker's view --------------------------------------------------------------------------

    async def _resync(self) -> None:
        """Rebuilds what runs from the containers' labels: running ones are adopted (never restarted),
        models believed up whose container is gone are marked stopped."""
        running = {}
        for info in await self.runtime.managed_containers():
            if info.running and info.model_id in self.slots:
                running[info.model_id] = info.id
        for model_id, slot in self.slots.items():
            if model_id in running and slot.state in (State.STOPPED, State.FAILED):
                self._adopt(model_id, running[model_id])
            elif model_id not in running and slot.state is State.READY:
                self._transition(model_id, Event.EXITED)
        self.docker_error = None
        self._synced = True
        self.reconcile()

    def _on_docker_lost(self, reason: str) -> None:
        self.docker_error = reason

    def _on_docker_event(self, event: dict[str, Any]) -> None:
        attributes = event.get("Actor", {}).get("Attributes", {})
        model_id = attributes.get(LABEL_MODEL)
        if model_id not in self.slots:
            return
        action = event.get("Action") or event.get("status")
        state = self.slots[model_id].state
        if action == "die":
            if state is State.STARTING:
                self._died[model_id].set()
            elif state is State.READY:
                # Unasked-for, whatever the code: vLLM exits 0 after its engine core died.
                exit_code = attributes.get("exitCode", "?")
                self.bus.publish("model_exited", model=model_id, exit_code=exit_code)
                message = f"model {model_id!r} exited with code {exit_code} while serving"
                self._start_failed(self._model(model_id), StartError(503, "model_exited", message))
                self._spawn(self._add_log_tail(model_id, event.get("id") or "", message))
                self.reconcile()
        elif action == "oom":
            self.bus.publish("model_oom", model=model_id)
        elif action == "start" and state in (State.STOPPED, State.FAILED):  # started by hand
            self._adopt(model_id, event.get("id") or event.get("Actor", {}).get("ID", ""))

    async def _add_log_tail(self, model_id: str, container_id: str, message: str) -> None:
        """Completes a crash's message with the container's last log lines (fetched after the fact, so
        the state changes at once), unless something newer has replaced the message meanwhile."""
        try:
            tail = await self.runtime.logs_tail(container_id, LOG_TAIL_LINES)
        except DockerError:
            return
        slot = self.slots.get(model_id)
        if tail and slot is not None and slot.state is State.FAILED and slot.last_error == message:
            self.slots[model_id] = replace(slot, last_error=f"{message}; last log lines:\n{tail}")

    def _adopt(self, model_id: str, container_id: str) -> None:
        self.bus.publish("container_adopted", model=model_id, container=container_id[:12])
        self._transition(model_id, Event.START, starting_since=self.now())
        self._spawn(self._run_start(self._model(model_id), container_id))
