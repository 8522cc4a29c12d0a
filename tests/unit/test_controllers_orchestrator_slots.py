"""Slots (``controllers/orchestrator/slots.py``): replicated and global plans.

Each test builds a service and its tasks in memory, asks for a plan, and checks the plan
the way a Swarm user would check `docker service ps` afterwards.
"""

from __future__ import annotations

import pytest

from shoal.controllers.orchestrator import restart as rs
from shoal.controllers.orchestrator import slots
from tests.unit.orchestrator_support import NOW, names, node, service, task

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


def test_a_move_of_a_clean_task_is_an_overlap_not_a_duplicate() -> None:
    # Rebalancing: the updater marks the running task replaced by a new task of the same
    # generation. Both stay while the new one starts; the old one stops once it runs.
    old = task(1, 1, node_name="a", state="running",
               notes={"shoal.io/replaced-by": "web.1.2"})
    starting = task(1, 2, node_name="c", state="starting")
    plan = slots.plan_replicated(service(replicas=1), [old, starting], now=NOW)
    assert plan.empty and plan.overlaps
    running = task(1, 2, node_name="c", state="running")
    plan = slots.plan_replicated(service(replicas=1), [old, running], now=NOW)
    assert names(plan.shutdowns) == ["web.1.1"] and not plan.creates
    assert plan.shutdowns[0].reason == "replaced by web.1.2 (start-first)"


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
