"""Rollout (``controllers/orchestrator/rollout.py``) and how ``slots`` applies it: which
tasks are dirty, and which of them a pass replaces: Swarm's default update behaviour
(parallelism 1, delay 0, stop-first, pause on failure), then each ``spec.updateConfig``
setting (parallelism, delay, start-first order, monitor, failure action, ratio)."""

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


def test_turning_rebalancing_on_or_off_makes_no_task_dirty() -> None:
    spread = {"constraints": ["node.role==worker"]}
    before = service(generation=1)
    before.spec["placement"] = dict(spread)
    recorded = task(1)
    recorded.spec.update(ro.task_copy(before))
    after = service(generation=2)
    after.spec["placement"] = {**spread, "rebalance": {"enabled": True, "maxSkew": 1}}
    assert not ro.is_dirty(recorded, after)
    assert not ro.is_dirty(task(1), service_with_placement({"rebalance": {"enabled": True}}))
    # A task made with rebalancing on records placement without it.
    assert ro.task_copy(after)["placement"] == spread
    assert "placement" not in ro.task_copy(service_with_placement({"rebalance": {}}))
    # The rest of placement still counts.
    assert ro.is_dirty(recorded, service_with_placement({"rebalance": {"enabled": True}}))


def service_with_placement(placement: dict[str, Any]) -> Any:
    svc = service(generation=2)
    svc.spec["placement"] = placement
    return svc


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
    # Stamped 3 s ago, in whole seconds: surely running for 2 s, so 8 s to go.
    assert decision.requeue_after is not None and abs(decision.requeue_after - 8.0) < 1e-6

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


# --- spec.updateConfig ---

CREATED = 1_700_000_000.0 - 800.0  # orchestrator_support's creationTimestamp, in seconds


def running_desired(plan: slots.Plan, tasks: list[Any]) -> set[str]:
    """Names of the tasks desired running once ``plan`` is applied."""
    stopped = {s.task.metadata.name for s in plan.shutdowns}
    keep = {t.metadata.name for t in tasks
            if t.spec["desiredState"] == "running" and t.metadata.name not in stopped}
    return keep | {c.name for c in plan.creates}


def test_update_config_is_read_from_the_spec_over_swarm_defaults() -> None:
    config, problems = ro.UpdateConfig.from_spec({
        "parallelism": 2, "delay": "1m05s", "order": "start-first", "monitor": "500ms",
        "failureAction": "continue", "maxFailureRatio": 0.25})
    assert config == ro.UpdateConfig(parallelism=2, delay=65.0, order="start-first",
                                     failure_action="continue", monitor=0.5,
                                     max_failure_ratio=0.25)
    assert problems == []
    assert ro.UpdateConfig.from_spec(None) == (ro.SWARM_DEFAULTS, [])


def test_an_unreadable_update_config_field_keeps_its_default_and_says_so() -> None:
    svc = changed(updateConfig={"parallelism": -1, "delay": "soon", "order": "sideways"})
    plan = slots.plan_replicated(svc, old_tasks(), now=NOW, nodes=[node("a")])
    assert names(plan.shutdowns) == ["web.1.1"]  # parallelism 1, stop-first: the defaults
    assert len(plan.problems) == 3
    assert plan.problems[0] == ("spec.updateConfig.parallelism -1: must be an integer >= 0 "
                                "(0 = all at once); using the default")
    assert "spec.updateConfig.delay 'soon': invalid duration" in plan.problems[1]
    assert plan.problems[2].startswith("spec.updateConfig.order 'sideways': must be "
                                       "stop-first or start-first")


def test_parallelism_two_replaces_two_slots_per_batch() -> None:
    svc = changed(replicas=6, updateConfig={"parallelism": 2})
    plan = slots.plan_replicated(svc, old_tasks(6), now=NOW, nodes=[node("a")])
    assert names(plan.shutdowns) == ["web.1.1", "web.2.1"]
    assert [c.slot for c in plan.creates] == [1, 2]
    # One of the batch running, one still starting: one slot of budget is free.
    tasks = [task(1, 2, node_name="a", generation=2, template=NEW, ended=NOW - 1),
             task(2, 2, node_name="a", state="starting", generation=2, template=NEW),
             *old_tasks(6)[2:]]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert names(plan.shutdowns) == ["web.3.1"]


def test_parallelism_zero_replaces_every_slot_at_once() -> None:
    svc = changed(replicas=6, updateConfig={"parallelism": 0})
    plan = slots.plan_replicated(svc, old_tasks(6), now=NOW, nodes=[node("a")])
    assert [c.slot for c in plan.creates] == [1, 2, 3, 4, 5, 6]


def test_delay_holds_the_next_batch_and_requeues_for_the_rest_of_it() -> None:
    svc = changed(replicas=4, updateConfig={"parallelism": 2, "delay": "10s"})
    tasks = [task(i, 2, node_name="a", generation=2, template=NEW, ended=NOW - 3)
             for i in (1, 2)] + old_tasks(4)[2:]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.empty and plan.requeue_after is not None
    assert abs(plan.requeue_after - 8.0) < 1e-6  # stamped 3 s ago: surely running 2 s
    # Level-triggered: a restarted controller at NOW + 8 sees the same tasks and goes on.
    assert slots.plan_replicated(svc, tasks, now=NOW + 7.9, nodes=[node("a")]).empty
    plan = slots.plan_replicated(svc, tasks, now=NOW + 8, nodes=[node("a")])
    assert names(plan.shutdowns) == ["web.3.1", "web.4.1"]


def test_start_first_starts_the_replacement_before_stopping_the_old_task() -> None:
    svc = changed(replicas=3, updateConfig={"order": "start-first"})
    tasks = old_tasks()
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.shutdowns == [] and [c.name for c in plan.creates] == ["web.1.2"]
    assert len(running_desired(plan, tasks)) == 4  # replicas + parallelism, not more

    # The replacement is starting: both stay, nothing more starts.
    tasks = [*old_tasks(), task(1, 2, node_name="a", state="starting", generation=2,
                                template=NEW)]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.empty and plan.update is not None and plan.update.updated == 1

    # It runs (healthy, if it has a health check): the old task of slot 1 is told to
    # stop, and slot 2's replacement starts beside its old task.
    tasks[-1].status.update(state="running", timestamp=NOW - 1)
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert [(s.task.metadata.name, s.reason) for s in plan.shutdowns] == [
        ("web.1.1", "replaced by web.1.2 (start-first)")]
    assert [c.name for c in plan.creates] == ["web.2.2"]
    assert len(running_desired(plan, tasks)) == 4


def test_start_first_keeps_the_old_task_while_its_replacement_fails() -> None:
    svc = changed(replicas=3, updateConfig={"order": "start-first",
                                            "failureAction": "continue"})
    bad = task(1, 2, node_name="a", state="failed", generation=2, template=NEW,
               ended=NOW - 30)
    plan = slots.plan_replicated(svc, [*old_tasks(), bad], now=NOW, nodes=[node("a")])
    # The restart policy replaces the failed one; web.1.1 keeps serving meanwhile.
    assert names(plan.shutdowns) == ["web.1.2"]
    assert [c.name for c in plan.creates] == ["web.1.3"]


def test_start_first_changed_again_mid_overlap_keeps_one_old_task_per_slot() -> None:
    # Generation 3 arrives while slot 1 has its old task and a generation-2 replacement
    # still starting: the replacement that never took over goes, the old task stays.
    svc = changed(image={"image": "shoal/busybox:3.0"}, generation=3, replicas=3,
                  updateConfig={"order": "start-first"})
    tasks = [*old_tasks(), task(1, 2, node_name="a", state="starting", generation=2,
                                template=NEW)]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert names(plan.shutdowns) == ["web.1.2"]
    assert [c.name for c in plan.creates] == ["web.1.3"]
    assert len(running_desired(plan, tasks)) == 4


def test_start_first_with_parallelism_two_never_exceeds_replicas_plus_two() -> None:
    svc = changed(replicas=4, updateConfig={"order": "start-first", "parallelism": 2})
    tasks = old_tasks(4)
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.shutdowns == [] and [c.slot for c in plan.creates] == [1, 2]
    assert len(running_desired(plan, tasks)) == 6


def test_monitor_counts_failures_that_come_soon_after_the_task_was_made() -> None:
    early = task(1, 2, state="failed", generation=2, ended=CREATED + 2)
    late = task(2, 2, state="failed", generation=2, ended=CREATED + 60)
    rejected = task(3, 2, state="rejected", generation=2, ended=CREATED + 600)
    got = ro.failures([early, late, rejected], 2, monitor=5.0)
    assert [t.metadata.name for t in got] == ["web.1.2", "web.3.2"]
    assert len(ro.failures([early, late, rejected], 2)) == 3  # no monitor: all


def test_failure_action_continue_goes_past_a_failed_task() -> None:
    svc = changed(replicas=3, updateConfig={"failureAction": "continue"})
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    tasks = [task(1, 1, node_name="a", state="shutdown", desired="shutdown"), bad,
             *old_tasks()[1:]]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.update is not None and plan.update.state == ro.UPDATING
    assert "web.2.1" in names(plan.shutdowns)


def test_max_failure_ratio_tolerates_that_share_of_failures() -> None:
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    tasks = [task(1, 1, node_name="a", state="shutdown", desired="shutdown"), bad,
             *old_tasks(4)[1:]]
    tolerant = changed(replicas=4, updateConfig={"maxFailureRatio": 0.25})
    plan = slots.plan_replicated(tolerant, tasks, now=NOW, nodes=[node("a")])
    assert plan.update is not None and plan.update.state == ro.UPDATING  # 1 of 4 is 0.25
    strict = changed(replicas=4, updateConfig={"maxFailureRatio": 0.2})
    plan = slots.plan_replicated(strict, tasks, now=NOW, nodes=[node("a")])
    assert plan.update is not None and plan.update.state == ro.PAUSED


def test_failure_action_rollback_pauses_and_says_rollback_is_not_built_yet() -> None:
    svc = changed(updateConfig={"failureAction": "rollback"})
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    bad.status["err"] = "No such image: shoal/busybox:2.0"
    plan = slots.plan_replicated(svc, [bad, *old_tasks()[1:]], now=NOW, nodes=[node("a")])
    assert plan.update is not None and plan.update.state == ro.PAUSED
    assert plan.update.message == (
        "update paused due to failure of task web.1.2 rejected on node a: No such image: "
        "shoal/busybox:2.0; failure action is rollback, which is not built yet: fix the "
        "service and apply it again")
