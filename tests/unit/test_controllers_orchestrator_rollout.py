"""Rollout (``controllers/orchestrator/rollout.py``) and how ``slots`` applies it: which
tasks are dirty, and which of them a pass replaces, with Swarm's default update
behaviour (parallelism 1, delay 0, stop-first, pause on failure)."""

from __future__ import annotations

from typing import Any

from shoal.controllers.orchestrator import rollout as ro
from shoal.controllers.orchestrator import slots
from tests.unit.orchestrator_support import NOW, names, node, service, task

NEW = {"image": "shoal/busybox:2.0"}


def changed(image: dict[str, Any] | None = None, generation: int = 2, replicas: int = 3,
            **spec: Any) -> Any:
    svc = service(replicas=replicas, generation=generation)
    svc.spec["template"] = image or NEW
    svc.spec.update(spec)
    return svc


def old_tasks(n: int = 3) -> list[Any]:
    return [task(i, node_name="a") for i in range(1, n + 1)]


def test_a_task_is_dirty_when_a_recorded_section_differs() -> None:
    svc = service(generation=2)
    same = task(1)
    assert not ro.is_dirty(same, svc)  # a replicas-only change: same template
    assert ro.is_dirty(task(1, template={"image": "y"}), svc)
    for section, value in (("placement", {"constraints": ["node.role==worker"]}),
                           ("forceUpdate", 1), ("networks", ["backend"]),
                           ("endpoint", {"ports": [{"target": 80, "published": 8080}]})):
        other = service(generation=2)
        other.spec[section] = value
        assert ro.is_dirty(same, other), section
        recorded = task(1)
        recorded.spec.update(ro.task_copy(other))
        assert not ro.is_dirty(recorded, other), section
    # Absent and empty compare equal: a vip endpoint without ports is no change.
    plain = service(generation=2)
    plain.spec["endpoint"] = {"mode": "vip"}
    assert not ro.is_dirty(same, plain)
    # The task of the current generation is clean without comparing anything.
    assert not ro.is_dirty(task(1, generation=2, template={"image": "y"}), svc)


def test_replicas_only_change_replaces_nothing() -> None:
    plan = slots.plan_replicated(service(replicas=4, generation=2), old_tasks(),
                                 now=NOW, nodes=[node("a")])
    assert [c.slot for c in plan.creates] == [4] and not plan.shutdowns
    assert plan.update is None


def test_image_change_replaces_one_slot_at_a_time_stop_first() -> None:
    svc = changed()
    plan = slots.plan_replicated(svc, old_tasks(), now=NOW, nodes=[node("a")])
    assert names(plan.shutdowns) == ["web.1.1"]
    [create] = plan.creates
    assert (create.slot, create.name) == (1, "web.1.2")
    assert plan.update is not None and plan.update.state == ro.UPDATING
    assert plan.update.message == "update in progress: 0 out of 3 tasks updated"

    # Next pass: the replacement is not running yet, so nothing more goes.
    tasks = [task(1, 1, node_name="a", state="shutdown", desired="shutdown"),
             task(1, 2, node_name="a", state="starting", generation=2, template=NEW),
             *old_tasks()[1:]]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.empty and plan.update is not None and plan.update.state == ro.UPDATING

    # Once it runs, the next slot.
    tasks[1].status["state"] = "running"
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert names(plan.shutdowns) == ["web.2.1"] and [c.slot for c in plan.creates] == [2]
    assert plan.update is not None and plan.update.updated == 1


def test_completed_once_every_slot_runs_the_new_spec() -> None:
    svc = changed()
    svc.status["update"] = {"state": "updating"}
    tasks = [task(i, 2, node_name="a", generation=2, template=NEW) for i in (1, 2, 3)]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.empty and plan.update is not None
    assert (plan.update.state, plan.update.message) == (ro.COMPLETED, "update completed")
    # A service that was never rolled reports nothing.
    del svc.status["update"]
    assert slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")]).update is None


def test_a_rejected_replacement_pauses_the_rollout_with_the_reason() -> None:
    svc = changed()
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    bad.status["err"] = "No such image: shoal/busybox:2.0"
    tasks = [task(1, 1, node_name="a", state="shutdown", desired="shutdown"), bad,
             *old_tasks()[1:]]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.update is not None and plan.update.state == ro.PAUSED
    assert plan.update.message == ("update paused due to failure of task web.1.2 rejected "
                                   "on node a: No such image: shoal/busybox:2.0")
    # The untouched slots keep their old tasks; the failed slot's restart is the restart
    # policy's business (after its delay).
    assert not any(s.task.metadata.name in ("web.2.1", "web.3.1") for s in plan.shutdowns)
    assert all(c.slot == 1 for c in plan.creates)


def test_a_new_generation_resumes_a_paused_rollout_and_reverts_bad_tasks() -> None:
    # Reverting the image (generation 3, the old template again): the old tasks are clean,
    # the rejected generation-2 task is dirty and is what gets replaced.
    svc = service(generation=3)
    svc.status["update"] = {"state": "paused"}
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    tasks = [bad, *old_tasks()[1:]]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert [c.slot for c in plan.creates] == [1]
    assert plan.update is not None and plan.update.state == ro.UPDATING


def test_force_update_replaces_every_task() -> None:
    svc = changed(image={"image": "x"}, forceUpdate=1)
    plan = slots.plan_replicated(svc, old_tasks(), now=NOW, nodes=[node("a")])
    assert names(plan.shutdowns) == ["web.1.1"]


def test_decide_parallelism_delay_and_failure_ratio() -> None:
    views = [ro.SlotView(i, task(i, node_name="a"), dirty=True) for i in (3, 1, 2)]
    decision = ro.decide(views, [], NOW, ro.UpdateConfig(parallelism=2))
    assert decision is not None and decision.replace == [1, 2]
    decision = ro.decide(views, [], NOW, ro.UpdateConfig(parallelism=0))
    assert decision is not None and decision.replace == [1, 2, 3]

    fresh = task(4, node_name="a", generation=2, ended=NOW - 3)  # running for 3 s
    with_fresh = [*views, ro.SlotView(4, fresh, dirty=False)]
    decision = ro.decide(with_fresh, [], NOW, ro.UpdateConfig(delay=10.0))
    assert decision is not None and decision.replace == []
    assert decision.requeue_after is not None and abs(decision.requeue_after - 7.0) < 1e-6

    failed = [task(4, 2, state="failed", generation=2)]
    decision = ro.decide(with_fresh, failed, NOW,
                         ro.UpdateConfig(max_failure_ratio=0.5))
    assert decision is not None and decision.state == ro.UPDATING  # 1 of 4 is tolerated
    decision = ro.decide(with_fresh, failed, NOW, ro.UpdateConfig(failure_action="continue"))
    assert decision is not None and decision.replace == [1]


def test_global_service_rolls_one_node_at_a_time() -> None:
    svc = changed(mode="global")
    svc.spec["mode"] = "global"
    nodes = [node("a"), node("b")]
    tasks = [task("a"), task("b")]
    plan = slots.plan_global(svc, tasks, nodes, now=NOW)
    assert names(plan.shutdowns) == ["web.a.1"]
    assert [(c.node_name, c.name) for c in plan.creates] == [("a", "web.a.2")]
