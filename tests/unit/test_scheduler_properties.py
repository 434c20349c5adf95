"""The scheduler's invariants, over every kind of state `scheduler_states()` draws (one host or two, every
model state, sleep mode, waiters): whatever the state, the plan never overcommits a host, never touches a
busy or pinned model, brings up one model at a time per host, and answers each waiter at most once.
A failure prints the shrunk state and the plan `decide` made of it."""

from hypothesis import given, note, settings

from tests.unit.scheduler_states import OCCUPYING, SchedulerState, brief, scheduler_states
from waker.core.lifecycle import State
from waker.core.plan import Grant, Plan, Policy, Refuse, Sleep, Slot, Start, Stop, Wake
from waker.core.scheduler import decide

# Drawing a state costs Hypothesis about 2.5 times what a seeded random state cost: 3,000 states take the
# time the three seed loops' 8,000 took, and catch every rule break those caught (and some they missed).
EXAMPLES = 3000
EPSILON = 1e-9
COMING_UP = (State.STARTING, State.WAKING)

# Where a model is and what it holds, restated from the rules rather than imported from the scheduler: a
# property that used the scheduler's own accounting would agree with any bug in it.


def hosts_of(slot: Slot, policy: Policy) -> tuple[str, ...]:
    return slot.hosts or (policy.budgets[0].name,)  # a model started before hosts were known is on the first


def held(slot: Slot) -> float:
    return slot.sleep_memory if slot.state is State.SLEEPING else slot.gpu_memory


def coming_up(state: SchedulerState, plan: Plan) -> list[tuple[Slot, tuple[str, ...]]]:
    """The models the plan starts or wakes, each with the host(s) it comes up on."""
    return [
        (state.slots[a.model], a.hosts if isinstance(a, Start) else hosts_of(state.slots[a.model], state.policy))
        for a in plan.actions
        if isinstance(a, Start | Wake)
    ]


def check_only_idle_unpinned_models_are_stopped_or_put_to_sleep(state: SchedulerState, plan: Plan) -> None:
    for stop in plan.of(Stop):
        s = state.slots[stop.model]
        idle = s.state is State.SLEEPING or (s.state is State.READY and s.in_flight == 0)
        assert idle and not s.pinned, f"stopped a busy, pinned or not ready model: {brief(s)}"
    for sleep in plan.of(Sleep):
        s = state.slots[sleep.model]
        assert s.state is State.READY and s.in_flight == 0 and not s.pinned, (
            f"put a busy or pinned model to sleep: {brief(s)}"
        )
        assert s.sleep_level > 0 and s.wake_failures < state.policy.max_wake_failures, f"cannot sleep: {brief(s)}"


def check_only_models_asked_for_come_up(state: SchedulerState, plan: Plan) -> None:
    waited = {w.model for w in state.queue}
    for action in plan.of(Start) + plan.of(Wake):
        s = state.slots[action.model]
        if isinstance(action, Start):
            down = s.state is State.STOPPED or (s.state is State.FAILED and state.now >= s.retry_at)
            assert down, f"started a model that is not down, or in its failure back-off: {brief(s)}"
        else:
            assert s.state is State.SLEEPING, f"woke a model that is not asleep: {brief(s)}"
        assert s.id in waited or (s.keep_warm and not s.suspended), f"brought up a model nobody asked for: {brief(s)}"


def check_one_start_or_wake_at_a_time_per_host(state: SchedulerState, plan: Plan) -> None:
    for budget in state.policy.budgets:
        there = [s.id for s, hosts in coming_up(state, plan) if budget.name in hosts]
        assert len(there) <= 1, f"{there} come up together on {budget.name}"
        busy = [s.id for s in state.slots.values() if s.state in COMING_UP and budget.name in hosts_of(s, state.policy)]
        assert not (there and busy), f"{there} comes up on {budget.name} while {busy} does"


def check_what_comes_up_fits_beside_what_occupies_its_hosts(state: SchedulerState, plan: Plan) -> None:
    """Against the state as it is: a start waits until the models stopped or put to sleep for it are."""
    for slot, hosts in coming_up(state, plan):
        for budget in (b for b in state.policy.budgets if b.name in hosts):
            others = [
                s
                for s in state.slots.values()
                if s.state in OCCUPYING and s.id != slot.id and budget.name in hosts_of(s, state.policy)
            ]
            used = sum(held(s) for s in others)
            assert used + slot.gpu_memory <= budget.capacity + EPSILON, f"{slot.id} overcommits {budget}"
            assert not (others and (slot.exclusive or any(s.exclusive for s in others))), (
                f"{slot.id} comes up beside another model on {budget.name} while one of them is exclusive"
            )


def check_starts_go_where_the_model_may_run(state: SchedulerState, plan: Plan) -> None:
    budgets = {b.name: b for b in state.policy.budgets}
    for start in plan.of(Start):
        slot = state.slots[start.model]
        assert len(start.hosts) == len(set(start.hosts)) == slot.host_count, f"{start} for {brief(slot)}"
        assert not slot.host or start.hosts[0] == slot.host, f"{start} is not on the host {slot.host!r} it names"
        assert all(h in budgets and budgets[h].up for h in start.hosts), f"{start} on a host down or undeclared"


def check_one_action_per_model(state: SchedulerState, plan: Plan) -> None:
    touched = [a.model for a in plan.actions if isinstance(a, Start | Stop | Sleep | Wake)]
    assert len(touched) == len(set(touched)), f"a model gets two actions: {touched}"


def check_each_waiter_is_answered_at_most_once_and_granted_a_ready_model(state: SchedulerState, plan: Plan) -> None:
    answered = [a.waiter for a in plan.actions if isinstance(a, Grant | Refuse)]
    assert len(answered) == len(set(answered)), f"a waiter is answered twice: {answered}"
    for grant in plan.of(Grant):
        assert state.slots[state.queue[grant.waiter].model].state is State.READY, f"{grant} for a model not ready"


def check_the_next_call_is_ahead(state: SchedulerState, plan: Plan) -> None:
    # A wake_at already passed would have the shell call decide again at once, over and over.
    assert plan.wake_at is None or plan.wake_at > state.now, f"wake_at {plan.wake_at} is not after now ({state.now})"


@settings(max_examples=EXAMPLES)
@given(scheduler_states())
def test_every_plan_keeps_the_scheduler_invariants(state: SchedulerState) -> None:
    plan = decide(state.slots, state.queue, state.policy, state.now)
    note(f"plan: {plan}")
    check_only_idle_unpinned_models_are_stopped_or_put_to_sleep(state, plan)
    check_only_models_asked_for_come_up(state, plan)
    check_one_start_or_wake_at_a_time_per_host(state, plan)
    check_what_comes_up_fits_beside_what_occupies_its_hosts(state, plan)
    check_starts_go_where_the_model_may_run(state, plan)
    check_one_action_per_model(state, plan)
    check_each_waiter_is_answered_at_most_once_and_granted_a_ready_model(state, plan)
    check_the_next_call_is_ahead(state, plan)
