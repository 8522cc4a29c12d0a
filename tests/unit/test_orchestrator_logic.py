"""The orchestrator's pure decision logic: task states, restart policy, slots, global mode.

Each test builds a service and its tasks in memory, asks for a plan, and checks the plan
the way a Swarm user would check `docker service ps` afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest

from shoal.controllers.orchestrator import restart as rs
from shoal.controllers.orchestrator import slots
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource, new

NOW = 1_700_000_000.0


def node(name: str, *, state: str = "ready", availability: str = "active",
         labels: dict[str, str] | None = None) -> Resource:
    n = new("Node", name, labels=labels)
    n.spec = {"availability": availability, "role": "worker"}
    n.status = {"state": state}
    return n


def service(name: str = "web", replicas: int = 3, *, mode: str = "replicated",
            restart: dict[str, Any] | None = None, history: int | None = None,
            constraints: list[str] | None = None, generation: int = 1) -> Resource:
    spec: dict[str, Any] = {"mode": mode, "replicas": replicas, "template": {"image": "x"}}
    if restart is not None:
        spec["restartPolicy"] = restart
    if history is not None:
        spec["taskHistoryLimit"] = history
    if constraints:
        spec["placement"] = {"constraints": constraints}
    s = new("Service", name, "default", spec=spec)
    s.metadata.generation = generation
    return s


def task(slot: int | str, seq: int = 1, *, node_name: str | None = None,
         state: str = "running", desired: str = "running", ended: float | None = None,
         generation: int = 1, notes: dict[str, str] | None = None,
         service_name: str = "web") -> Resource:
    """A task of ``service_name``: an int ``slot`` for replicated, a node name for global."""
    t = new("Task", f"{service_name}.{slot}.{seq}", "default",
            labels={"shoal.io/service": service_name})
    t.spec = {"serviceName": service_name, "desiredState": desired,
              "serviceGeneration": generation}
    if isinstance(slot, int):
        t.spec["slot"] = slot
        if node_name:
            t.spec["nodeName"] = node_name
    else:
        t.spec["slot"] = 0
        t.spec["nodeName"] = slot
    t.metadata.creationTimestamp = "2023-11-14T22:00:00Z"
    t.metadata.annotations = dict(notes or {})
    t.status = {"state": state}
    if ended is not None:
        t.status["timestamp"] = ended
    return t


def names(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        obj = item.task if isinstance(item, slots.Shutdown) else item
        out.append(obj.name if isinstance(item, slots.Create) else obj.metadata.name)
    return sorted(out)


# --- task states -----------------------------------------------------------------------------


def test_states_only_move_forward_and_ends_are_final() -> None:
    assert ts.STATES[0] == "new" and ts.STATES[6] == "running"
    assert ts.can_transition("new", "pending")
    assert ts.can_transition("pending", "running")  # skipping ahead is fine
    assert not ts.can_transition("running", "starting")
    assert not ts.can_transition("running", "running")
    assert ts.can_transition("running", "failed")
    assert not ts.can_transition("failed", "shutdown")  # terminal is final
    assert not ts.can_transition("complete", "orphaned")
    assert [s for s in ts.STATES if ts.is_terminal(s)] == [
        "complete", "failed", "shutdown", "rejected", "orphaned"]
    with pytest.raises(ValueError, match='unknown task state "exploded"'):
        ts.can_transition("running", "exploded")


def test_task_readers() -> None:
    t = task(1, desired="shutdown", state="running", ended=NOW)
    assert not ts.is_active_desired(t) and ts.is_live(t) and not ts.has_ended(t)
    assert ts.is_active_desired(task(1, desired="pending"))
    assert ts.is_active_desired(new("Task", "t"))  # desiredState defaults to running
    assert ts.observed_state(new("Task", "t")) == "new"
    assert ts.service_name(t) == "web" and ts.task_key(t) == "default/web.1.1"
    assert ts.parse_timestamp("2023-11-14T22:13:20Z") == NOW
    assert ts.parse_timestamp("2023-11-14T22:13:20.5+00:00") == NOW + 0.5
    assert ts.parse_timestamp(str(NOW)) == NOW
    assert ts.parse_timestamp("yesterday") is None and ts.parse_timestamp(None) is None


# --- restart policy ------------------------------------------------------------------------


def test_restart_policy_defaults_and_parsing() -> None:
    assert rs.RestartPolicy.from_spec(None) == rs.RestartPolicy("any", 5.0, 0, 0.0)
    policy = rs.RestartPolicy.from_spec({"condition": "on-failure", "delay": "1m30s",
                                         "maxAttempts": 3, "window": "2m"})
    assert policy == rs.RestartPolicy("on-failure", 90.0, 3, 120.0)
    with pytest.raises(ValueError, match=r"restartPolicy\.condition"):
        rs.RestartPolicy.from_spec({"condition": "sometimes"})


def test_restart_decisions() -> None:
    policy = rs.RestartPolicy(delay=5.0)
    assert rs.decide(task(1), policy, NOW).action is rs.Action.NOT_NEEDED
    failed = task(1, state="failed", ended=NOW - 2)
    later = rs.decide(failed, policy, NOW)
    assert later.action is rs.Action.LATER and later.delay == pytest.approx(3.0)
    assert rs.decide(failed, policy, NOW + 3).action is rs.Action.NOW
    # No end time: restart rather than wait forever.
    assert rs.decide(task(1, state="failed"), policy, NOW).action is rs.Action.NOW

    done = task(1, state="complete", ended=NOW - 60)
    assert rs.decide(done, policy, NOW).action is rs.Action.NOW  # condition any
    on_failure = rs.RestartPolicy(condition="on-failure")
    assert rs.decide(done, on_failure, NOW).action is rs.Action.NEVER
    assert rs.decide(task(1, state="failed", ended=NOW - 60), on_failure,
                     NOW).action is rs.Action.NOW
    assert rs.decide(task(1, state="rejected", ended=NOW - 60), on_failure,
                     NOW).action is rs.Action.NOW
    never = rs.decide(failed, rs.RestartPolicy(condition="none"), NOW)
    assert never.action is rs.Action.NEVER and "condition is none" in never.reason


def test_max_attempts_count_the_slots_restarts() -> None:
    policy = rs.RestartPolicy(delay=0, max_attempts=3)
    ledger = rs.Ledger()
    for i in range(3):
        ledger = ledger.after_restart(NOW + i, policy)
    assert ledger == rs.Ledger(count=3, times=(NOW, NOW + 1, NOW + 2))
    ledger = ledger.after_restart(NOW + 3, policy)
    assert ledger.times == (NOW + 1, NOW + 2, NOW + 3)  # trimmed to maxAttempts entries

    third = task(1, state="failed", ended=NOW, notes=rs.Ledger(count=2).annotations())
    assert rs.decide(third, policy, NOW + 10).action is rs.Action.NOW
    fourth = task(1, state="failed", ended=NOW, notes=rs.Ledger(count=3).annotations())
    decision = rs.decide(fourth, policy, NOW + 10)
    assert decision.action is rs.Action.NEVER
    assert decision.reason == "restart limit reached: 3 of 3 restarts"


def test_window_forgets_old_restarts() -> None:
    policy = rs.RestartPolicy(delay=0, max_attempts=2, window=60.0)
    notes = rs.Ledger(count=5, times=(NOW - 100, NOW - 30, NOW - 10)).annotations()
    t = task(1, state="failed", ended=NOW, notes=notes)
    decision = rs.decide(t, policy, NOW)
    assert decision.action is rs.Action.NEVER and "within 1m0s" in decision.reason
    assert rs.decide(t, policy, NOW + 35).action is rs.Action.NOW  # one left in the window


def test_replacement_annotations() -> None:
    policy = rs.RestartPolicy(max_attempts=5)
    failed = task(1, state="failed", ended=NOW, notes=rs.Ledger(1, (NOW - 50,)).annotations())
    assert rs.replacement_annotations(failed, policy, NOW) == {
        rs.RESTART_COUNT: "2", rs.RESTART_TIMES: f"{NOW - 50:.0f} {NOW:.0f}"}
    # A move is not the task's fault: history carried over unchanged.
    assert rs.Ledger.of(task(1, notes=rs.replacement_annotations(
        failed, policy, NOW, counted=False))) == rs.Ledger(1, (NOW - 50,))
    # A new generation starts over.
    assert rs.replacement_annotations(failed, policy, NOW, generation=2) == {
        rs.RESTART_COUNT: "1", rs.RESTART_TIMES: f"{NOW:.0f}"}


# --- replicated services -------------------------------------------------------------------


def test_scale_up_fills_the_lowest_free_slots() -> None:
    plan = slots.plan_replicated(service(replicas=3), [], now=NOW)
    assert [(c.slot, c.name, c.node_name) for c in plan.creates] == [
        (1, "web.1.1", None), (2, "web.2.1", None), (3, "web.3.1", None)]
    assert not plan.shutdowns and not plan.deletes

    existing = [task(1, node_name="a"), task(4, node_name="b")]
    plan = slots.plan_replicated(service(replicas=4), existing, now=NOW)
    assert [c.slot for c in plan.creates] == [2, 3]
    assert slots.lowest_free_slots([1, 4], 3) == [2, 3, 5]


def test_steady_state_plans_nothing() -> None:
    existing = [task(i, node_name="a") for i in (1, 2, 3)]
    plan = slots.plan_replicated(service(), existing, now=NOW, nodes=[node("a")])
    assert plan.empty and plan.requeue_after is None and not plan.problems


def test_scale_down_removes_from_the_most_loaded_nodes_first() -> None:
    existing = [task(1, node_name="a"), task(2, node_name="a"), task(3, node_name="a"),
                task(4, node_name="b"), task(5, node_name="c")]
    plan = slots.plan_replicated(service(replicas=3), existing, now=NOW)
    assert names(plan.shutdowns) == ["web.2.1", "web.3.1"]
    assert {s.reason for s in plan.shutdowns} == {"scaled down to 3 replicas"}
    assert not plan.creates


def test_scale_down_prefers_tasks_not_yet_running_then_high_slots() -> None:
    existing = [task(1, node_name="a"), task(2, node_name="a", state="starting"),
                task(3, node_name="a"), task(4, node_name="b"), task(5, node_name="b"),
                task(6)]  # not even assigned: goes first
    plan = slots.plan_replicated(service(replicas=3), existing, now=NOW)
    assert names(plan.shutdowns) == ["web.2.1", "web.5.1", "web.6.1"]
    assert slots.scale_down_order([(1, "a", True), (2, "b", True)]) == [2, 1]


def test_scale_down_removes_the_slot_history_once_safe() -> None:
    existing = [task(1, node_name="a"), task(2, node_name="a"),
                task(2, 0, node_name="a", state="failed", desired="shutdown"),
                task(3, node_name="b", state="shutdown", desired="shutdown")]
    plan = slots.plan_replicated(service(replicas=1), existing, now=NOW)
    assert names(plan.shutdowns) == ["web.2.1"]
    # Slot 3 is gone and its task has stopped: deleted. Slot 2's old task ended: deleted;
    # its current one is only being stopped now, so it waits for the next pass.
    assert names(plan.deletes) == ["web.2.0", "web.3.1"]


def test_restart_now_replaces_in_the_same_slot() -> None:
    existing = [task(1, node_name="a"), task(2, node_name="b", state="failed", ended=NOW - 10)]
    plan = slots.plan_replicated(service(replicas=2), existing, now=NOW)
    assert names(plan.shutdowns) == ["web.2.1"]
    [create] = plan.creates
    assert (create.slot, create.name) == (2, "web.2.2")
    assert rs.Ledger.of(task(2, notes=create.annotations)).count == 1


def test_restart_delay_keeps_the_slot_and_requeues() -> None:
    existing = [task(1, node_name="a", state="failed", ended=NOW - 1)]
    plan = slots.plan_replicated(service(replicas=1, restart={"delay": "10s"}), existing,
                                 now=NOW)
    assert plan.empty and plan.requeue_after == pytest.approx(9.0)


def test_restart_limit_finishes_the_slot_until_the_service_changes() -> None:
    svc = service(replicas=2, restart={"condition": "on-failure", "maxAttempts": 2,
                                       "delay": "0s"})
    spent = rs.Ledger(count=2).annotations()
    existing = [task(1, node_name="a"),
                task(2, 3, node_name="b", state="failed", ended=NOW, notes=spent)]
    plan = slots.plan_replicated(svc, existing, now=NOW)
    assert not plan.creates
    [shutdown] = plan.shutdowns
    assert shutdown.task.metadata.name == "web.2.3"
    assert shutdown.annotations == {rs.NO_RESTART: "restart limit reached: 2 of 2 restarts"}

    # Next pass: the slot is finished, not free: nothing is created in it.
    stopped = task(2, 3, node_name="b", state="failed", desired="shutdown", ended=NOW,
                   notes={**spent, **shutdown.annotations})
    plan = slots.plan_replicated(svc, [existing[0], stopped], now=NOW + 60)
    assert plan.empty

    # A changed service (new generation) gives the slot a fresh start.
    svc.metadata.generation = 2
    plan = slots.plan_replicated(svc, [existing[0], stopped], now=NOW + 60)
    assert [(c.slot, c.name) for c in plan.creates] == [(2, "web.2.4")]


def test_tasks_on_lost_nodes_move_at_once_without_counting_a_restart() -> None:
    existing = [task(1, node_name="a"), task(2, node_name="b"), task(3, node_name="c"),
                task(4, node_name="gone")]
    nodes = [node("a"), node("b", state="down"), node("c", availability="drain")]
    plan = slots.plan_replicated(service(replicas=4, restart={"delay": "1h"}), existing,
                                 now=NOW, nodes=nodes)
    assert names(plan.shutdowns) == ["web.2.1", "web.3.1", "web.4.1"]
    assert [(c.slot, c.name) for c in plan.creates] == [(2, "web.2.2"), (3, "web.3.2"),
                                                         (4, "web.4.2")]
    assert all(c.annotations == {} for c in plan.creates)
    assert "node b is down" in plan.shutdowns[0].reason
    # A paused node keeps its task.
    paused = slots.plan_replicated(service(replicas=1), [task(1, node_name="p")], now=NOW,
                                   nodes=[node("p", availability="pause")])
    assert paused.empty


def test_slot_emptied_elsewhere_is_refilled_with_its_history() -> None:
    notes = rs.Ledger(count=1).annotations()
    moved = task(1, 2, node_name="b", state="running", desired="shutdown", notes=notes)
    plan = slots.plan_replicated(service(replicas=1), [moved], now=NOW)
    [create] = plan.creates
    assert (create.slot, create.name) == (1, "web.1.3")
    assert create.annotations == notes


def test_duplicate_tasks_in_a_slot_keep_the_one_furthest_along() -> None:
    existing = [task(1, 1, node_name="a", state="running"), task(1, 2, state="pending")]
    plan = slots.plan_replicated(service(replicas=1), existing, now=NOW)
    assert names(plan.shutdowns) == ["web.1.2"] and not plan.creates


def test_history_keeps_the_newest_per_slot() -> None:
    history = [task(1, seq, node_name="a", state="failed", desired="shutdown",
                    ended=NOW - 100 + seq) for seq in range(1, 8)]
    # The oldest is still shutting down on its node: never deleted under the agent's feet.
    history[0].status["state"] = "running"
    existing = [*history, task(1, 8, node_name="a")]
    plan = slots.plan_replicated(service(replicas=1, history=5), existing, now=NOW)
    assert names(plan.deletes) == ["web.1.2"]
    plan = slots.plan_replicated(service(replicas=1, history=2), existing, now=NOW)
    assert names(plan.deletes) == ["web.1.2", "web.1.3", "web.1.4", "web.1.5"]
    assert slots.trim_history(existing, -1) == []


def test_history_counts_the_task_being_replaced() -> None:
    old = [task(1, seq, node_name="a", state="failed", desired="shutdown") for seq in (1, 2)]
    failing = task(1, 3, node_name="a", state="failed", ended=NOW - 60)
    plan = slots.plan_replicated(service(replicas=1, history=2), [*old, failing], now=NOW)
    assert names(plan.deletes) == ["web.1.1"]
    assert [c.name for c in plan.creates] == ["web.1.4"]


def test_invalid_policy_and_replicas_are_reported() -> None:
    svc = service(replicas=1, restart={"condition": "whenever"})
    plan = slots.plan_replicated(svc, [], now=NOW)
    assert len(plan.creates) == 1 and "restartPolicy.condition" in plan.problems[0]
    bad = service()
    bad.spec["replicas"] = "many"
    assert slots.plan_replicated(bad, [], now=NOW).problems == ["invalid replicas 'many'"]


# --- global services -----------------------------------------------------------------------


def test_global_one_task_per_eligible_node() -> None:
    nodes = [node("a"), node("b"), node("p", availability="pause"),
             node("d", availability="drain"), node("x", state="down")]
    plan = slots.plan_global(service(mode="global"), [], nodes, now=NOW)
    assert [(c.node_name, c.slot, c.name) for c in plan.creates] == [
        ("a", 0, "web.a.1"), ("b", 0, "web.b.1")]


def test_global_follows_node_changes() -> None:
    nodes = [node("a"), node("p", availability="pause"), node("d", availability="drain"),
             node("x", state="down"), node("w", labels={"tier": "web"})]
    existing = [task(n) for n in ("a", "p", "d", "x", "w", "gone")]
    svc = service(mode="global", constraints=["node.labels.tier!=web"])
    plan = slots.plan_global(svc, existing, nodes, now=NOW)
    assert not plan.creates
    reasons = {s.task.metadata.name: s.reason for s in plan.shutdowns}
    assert reasons == {"web.d.1": "node d is drained", "web.x.1": "node x is down",
                       "web.w.1": "node w no longer matches node.labels.tier!=web",
                       "web.gone.1": "node gone is gone"}

    # The drained node comes back: it gets a new task; the old one is history.
    nodes[2].spec["availability"] = "active"
    stopped = task("d", state="shutdown", desired="shutdown")
    plan = slots.plan_global(svc, [task("a"), task("p"), stopped], nodes, now=NOW)
    assert [(c.node_name, c.name) for c in plan.creates] == [("d", "web.d.2")]
    assert not plan.shutdowns and not plan.deletes


def test_global_restarts_on_the_same_node_and_forgets_gone_nodes() -> None:
    nodes = [node("a")]
    existing = [task("a", state="failed", ended=NOW - 30),
                task("gone", state="shutdown", desired="shutdown")]
    plan = slots.plan_global(service(mode="global"), existing, nodes, now=NOW)
    assert names(plan.shutdowns) == ["web.a.1"]
    assert [(c.node_name, c.name) for c in plan.creates] == [("a", "web.a.2")]
    assert names(plan.deletes) == ["web.gone.1"]


def test_global_with_an_unreadable_constraint_changes_nothing() -> None:
    svc = service(mode="global", constraints=["node.labels.tier=web"])
    plan = slots.plan_global(svc, [task("a")], [node("a"), node("b")], now=NOW)
    assert plan.empty and "write <key>==<value>" in plan.problems[0]


def test_plan_service_dispatches_on_mode() -> None:
    nodes = [node("a"), node("b")]
    assert len(slots.plan_service(service(replicas=1), [], nodes, now=NOW).creates) == 1
    assert len(slots.plan_service(service(mode="global"), [], nodes, now=NOW).creates) == 2
    assert slots.plan_service(service(mode="daemon"), [], nodes, now=NOW).problems
