"""The orchestrator loop's writes: a slot's shutdown and its replacement always share a
transaction (so no crash between transactions can leave a slot with two tasks desired
running), transactions stay within etcd's limit, and new tasks look as they should."""

from __future__ import annotations

import time

from shoal.controllers.orchestrator import controller as oc
from shoal.controllers.orchestrator import slots
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource, new


def service(replicas: int) -> Resource:
    svc = new("Service", "web", "default",
              spec={"replicas": replicas, "template": {"image": "busybox"}})
    svc.metadata.uid = "svc-uid"
    svc.metadata.generation = 3
    return svc


def node(name: str, state: str = "ready") -> Resource:
    n = new("Node", name)
    n.spec = {"availability": "active"}
    n.status = {"state": state}
    return n


def task(slot: int, node_name: str) -> Resource:
    t = new("Task", f"web.{slot}.1", "default", labels={ts.SERVICE_LABEL: "web"})
    t.metadata.resourceVersion = str(100 + slot)
    t.metadata.creationTimestamp = "2026-01-01T00:00:00Z"
    t.spec = {"serviceName": "web", "slot": slot, "desiredState": "running",
              "serviceGeneration": 3, "nodeName": node_name, "template": {"image": "busybox"}}
    t.status = {"state": "running"}
    return t


def test_a_slot_move_never_spans_two_transactions() -> None:
    svc = service(300)
    # 150 of the 300 tasks sit on a node that went down: 150 shutdowns + 150 creates.
    tasks = [task(i, "down" if i % 2 else "up") for i in range(1, 301)]
    plan = slots.plan_service(svc, tasks, [node("up"), node("down", "down")],
                              now=time.time())
    assert len(plan.shutdowns) == 150 and len(plan.creates) == 150
    txns = oc.Orchestrator()._transactions(svc, plan)
    assert len(txns) >= 3
    seen_slots: set[int] = set()
    for ops in txns:
        assert len(ops) <= 127
        per_slot: dict[int, list[str]] = {}
        for op in ops:
            per_slot.setdefault(ts.slot_of(op.obj), []).append(op.action)
        for slot, actions in per_slot.items():
            # Both halves of the move, the stop first, in this one transaction.
            assert actions == ["update", "create"], (slot, actions)
            assert slot not in seen_slots
            seen_slots.add(slot)
    assert seen_slots == set(range(1, 301, 2))


def test_new_tasks_carry_what_agents_and_the_scheduler_read() -> None:
    svc = service(2)
    plan = slots.plan_service(svc, [], [node("up")], now=time.time())
    txns = oc.Orchestrator()._transactions(svc, plan)
    created = [op.obj for ops in txns for op in ops]
    assert [t.name for t in created] == ["web.1.1", "web.2.1"]
    first = created[0]
    assert first.metadata.namespace == "default"
    assert first.metadata.labels == {ts.SERVICE_LABEL: "web"}
    assert first.metadata.ownerReferences[0]["uid"] == "svc-uid"
    assert first.spec == {"serviceName": "web", "slot": 1, "template": {"image": "busybox"},
                          "desiredState": "running", "serviceGeneration": 3}
    assert first.status["state"] == "pending" and first.status["message"] == "slot 1 of 2"


def test_malformed_tasks_are_named() -> None:
    bad = task(1, "up")
    bad.spec["slot"] = "x"
    bad.spec["template"] = "nope"
    problems = oc.task_problems(bad)
    assert "spec.slot must be an integer, got 'x'" in problems
    assert "spec.template must be an object" in problems
    assert oc.task_problems(task(2, "up")) == []
