"""Batches (``controllers/updater/batches.py``): which slots of a changed service a pass
replaces, and what ``status.update`` says: Swarm's default update behaviour
(parallelism 1, delay 0, stop-first, pause on failure), each ``spec.updateConfig``
setting (parallelism, delay, start-first order, monitor, failure action, ratio), the
rollback states, ``spec.paused`` and ``shoal.io/resumed-at``; and the orchestrator's
side of it: it leaves dirty tasks alone and ends a start-first overlap."""

from __future__ import annotations

from typing import Any

from shoal.controllers import taskspec
from shoal.controllers.orchestrator import slots
from shoal.controllers.updater import batches as bt
from shoal.controllers.updater import config as cfg
from shoal.crds import taskstates as ts
from tests.unit.orchestrator_support import NOW, names, node, service, task

NEW = {"image": "shoal/busybox:2.0"}
CREATED = 1_700_000_000.0 - 800.0  # orchestrator_support's creationTimestamp, in seconds


def changed(image: dict[str, Any] | None = None, generation: int = 2, replicas: int = 3,
            **spec: Any) -> Any:
    svc = service(replicas=replicas, generation=generation)
    svc.spec["template"] = image or NEW
    svc.spec.update(spec)
    return svc


def old_tasks(n: int = 3) -> list[Any]:
    return [task(i, node_name="a") for i in range(1, n + 1)]


def decide(svc: Any, tasks: list[Any], now: float = NOW,
           moves: tuple[int | str, ...] = ()) -> bt.Decision | None:
    """One pass, as the controller makes it from the service and its tasks."""
    views = bt.views(tasks, taskspec.Wanted(svc), svc.spec.get("mode") == "global", moves)
    config = cfg.for_service(svc)
    resumed = ts.parse_timestamp(svc.metadata.annotations.get(cfg.RESUMED_AT))
    failed = bt.failures([t for t in tasks if ts.has_ended(t)], svc.metadata.generation,
                         config.monitor, resumed)
    return bt.decide(views, failed, now, config, svc.status.get("update"),
                     rollback=cfg.is_rollback(svc), paused=svc.spec.get("paused") is True,
                     service=svc.metadata.name)


def keys(d: bt.Decision | None) -> list[int | str]:
    assert d is not None
    return [r.key for r in d.replace]


def test_nothing_to_report_when_nothing_is_dirty_and_nothing_was_rolling() -> None:
    assert decide(service(replicas=4, generation=2), old_tasks()) is None


def test_image_change_replaces_one_slot_at_a_time_stop_first() -> None:
    svc = changed()
    d = decide(svc, old_tasks())
    assert d is not None and keys(d) == [1] and d.replace[0].order == "stop-first"
    assert d.state == bt.UPDATING
    assert d.message == "update in progress: 0 out of 3 tasks updated"

    # Next pass: the replacement is not running yet, so nothing more goes.
    tasks = [task(1, 1, node_name="a", state="shutdown", desired="shutdown"),
             task(1, 2, node_name="a", state="starting", generation=2, template=NEW),
             *old_tasks()[1:]]
    d = decide(svc, tasks)
    assert keys(d) == [] and d is not None and d.state == bt.UPDATING

    # Once it runs, the next slot.
    tasks[1].status["state"] = "running"
    d = decide(svc, tasks)
    assert keys(d) == [2] and d is not None and d.updated == 1


def test_completed_once_every_slot_runs_the_new_spec() -> None:
    svc = changed()
    svc.status["update"] = {"state": "updating"}
    tasks = [task(i, 2, node_name="a", generation=2, template=NEW) for i in (1, 2, 3)]
    d = decide(svc, tasks)
    assert d is not None and (d.state, d.message) == (bt.COMPLETED, "update completed")
    del svc.status["update"]
    assert decide(svc, tasks) is None  # a service that was never rolled reports nothing


def test_completion_waits_out_the_monitor_after_the_last_batch() -> None:
    svc = changed()
    svc.status["update"] = {"state": "updating"}
    tasks = [task(i, 2, node_name="a", generation=2, template=NEW) for i in (1, 2, 3)]
    tasks[2].status["timestamp"] = NOW - 2.0  # the last ran 2 s ago
    for t in tasks[:2]:
        t.status["timestamp"] = NOW - 60.0
    views = bt.views(tasks, taskspec.Wanted(svc), False)
    config = cfg.for_service(svc)  # monitor 5s, Swarm's default
    d = bt.decide(views, [], NOW, config, svc.status["update"], generation=2)
    # (stamps have whole seconds: 5 - 2 + 1 s of rounding are left to watch)
    assert d is not None and d.state == bt.UPDATING and d.requeue_after == 4.0, d
    assert "monitoring the last for 4s" in d.message
    later = bt.decide(views, [], NOW + 4.0, config, svc.status["update"], generation=2)
    assert later is not None and later.state == bt.COMPLETED
    # A task of the last batch failing within the monitor still pauses the update.
    tasks[2].status = {"state": "failed", "timestamp": NOW - 1.0,
                       "err": "exit code 1"}
    tasks[2].metadata.creationTimestamp = str(NOW - 3.0)
    failed = bt.failures([tasks[2]], 2, config.monitor)
    paused = bt.decide(bt.views(tasks, taskspec.Wanted(svc), False), failed, NOW, config,
                       svc.status["update"], generation=2)
    assert paused is not None and paused.state == bt.PAUSED, paused


def test_a_running_report_stamped_hours_ahead_does_not_hold_the_update_for_hours() -> None:
    # Found while adding the chaos harness's clock-jump fault: the last task's agent had its wall
    # clock stepped 2 h ahead when it reported running. Monitoring "until 2 h + 5 s from
    # now" would keep the update `updating` for 2 h after the clocks agree again.
    svc = changed()
    svc.status["update"] = {"state": "updating"}
    tasks = [task(i, 2, node_name="a", generation=2, template=NEW) for i in (1, 2, 3)]
    for t in tasks[:2]:
        t.status["timestamp"] = NOW - 60.0
    tasks[2].status["timestamp"] = NOW + 7200.0
    config = cfg.for_service(svc)  # monitor 5s
    d = bt.decide(bt.views(tasks, taskspec.Wanted(svc), False), [], NOW, config,
                  svc.status["update"], generation=2)
    assert d is not None and d.state == bt.COMPLETED, d
    # ...and an update's delay between batches is not held by such a stamp either.
    svc = changed(updateConfig={"delay": "10s"})
    tasks = [task(1, 2, node_name="a", generation=2, template=NEW), task(2), task(3)]
    tasks[0].status["timestamp"] = NOW + 7200.0
    d = bt.decide(bt.views(tasks, taskspec.Wanted(svc), False), [], NOW,
                  cfg.for_service(svc), {"state": "updating"}, generation=2)
    assert d is not None and keys(d) == [2], d


def test_a_rejected_replacement_pauses_the_rollout_with_the_reason() -> None:
    svc = changed()
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    bad.status["err"] = "No such image: shoal/busybox:2.0"
    tasks = [task(1, 1, node_name="a", state="shutdown", desired="shutdown"), bad,
             *old_tasks()[1:]]
    d = decide(svc, tasks)
    assert d is not None and d.state == bt.PAUSED and d.replace == []
    assert d.message == ("update paused due to failure of task web.1.2 rejected on node a: "
                         "No such image: shoal/busybox:2.0")


def test_resumed_at_forgets_failures_that_ended_before_it() -> None:
    svc = changed()
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 10)
    tasks = [task(1, 1, node_name="a", state="shutdown", desired="shutdown"), bad,
             *old_tasks()[1:]]
    svc.metadata.annotations[cfg.RESUMED_AT] = "2023-11-14T22:13:15Z"  # NOW - 5
    d = decide(svc, tasks)
    assert d is not None and d.state == bt.UPDATING and keys(d) == [2]


def test_a_new_generation_resumes_a_paused_rollout_and_reverts_bad_tasks() -> None:
    svc = service(generation=3)
    svc.status["update"] = {"state": "paused"}
    starting = task(1, 2, node_name="a", state="starting", generation=2, template=NEW)
    d = decide(svc, [starting, *old_tasks()[1:]])
    assert keys(d) == [1] and d is not None and d.state == bt.UPDATING


def test_user_pause_replaces_nothing_and_says_how_to_resume() -> None:
    svc = changed(paused=True)
    d = decide(svc, old_tasks())
    assert d is not None and d.replace == [] and d.state == bt.PAUSED
    assert d.message == ("update paused by user (swctl rollout resume service/web "
                         "continues it)")
    svc.spec["paused"] = False
    assert keys(decide(svc, old_tasks())) == [1]


def test_rollback_generation_uses_rollback_config_and_rollback_states() -> None:
    svc = changed(updateConfig={"parallelism": 1, "failureAction": "rollback"},
                  rollbackConfig={"parallelism": 0, "failureAction": "pause"})
    svc.metadata.annotations[cfg.ROLLBACK_GENERATION] = "2"
    d = decide(svc, old_tasks())
    assert d is not None and keys(d) == [1, 2, 3] and d.state == bt.ROLLBACK_STARTED
    # A failure during a rollback pauses it: a rollback is never rolled back.
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    d = decide(svc, [bad, *old_tasks()[1:]])
    assert d is not None and d.state == bt.ROLLBACK_PAUSED and d.rollback_after is None
    done = [task(i, 2, node_name="a", generation=2, template=NEW) for i in (1, 2, 3)]
    svc.status["update"] = {"state": bt.ROLLBACK_STARTED}
    d = decide(svc, done)
    assert d is not None and (d.state, d.message) == (bt.ROLLBACK_COMPLETED,
                                                      "rollback completed")


def test_failure_action_rollback_asks_for_a_rollback_naming_the_failure() -> None:
    svc = changed(updateConfig={"failureAction": "rollback"})
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    bad.status["err"] = "No such image: shoal/busybox:2.0"
    d = decide(svc, [bad, *old_tasks()[1:]])
    assert d is not None and d.state == bt.ROLLBACK_STARTED
    assert d.rollback_after == "task web.1.2 rejected on node a: No such image: " \
                               "shoal/busybox:2.0"
    assert d.message == f"rollback started: update rolled back due to failure of " \
                        f"{d.rollback_after}"


def test_progressing_condition_per_state() -> None:
    assert bt.progressing(bt.UPDATING, "", False) == (True, "Updating")
    assert bt.progressing(bt.COMPLETED, "", False) == (True, "Completed")
    assert bt.progressing(bt.PAUSED, "", False) == (False, "UpdatePaused")
    assert bt.progressing(bt.ROLLBACK_PAUSED, "", False) == (False, "RollbackPaused")
    assert bt.progressing(bt.ROLLBACK_COMPLETED, "", False) == (True, "RollbackCompleted")
    assert bt.progressing(bt.ROLLBACK_COMPLETED, "", True) == (False, "RolledBack")


def test_force_update_replaces_every_task() -> None:
    assert keys(decide(changed(image={"image": "x"}, forceUpdate=1), old_tasks())) == [1]


def test_decide_parallelism_delay_and_failure_ratio() -> None:
    views = [bt.SlotView(i, task(i, node_name="a"), bt.DIRTY) for i in (1, 2, 3)]
    d = bt.decide(views, [], NOW, cfg.UpdateConfig(parallelism=2))
    assert keys(d) == [1, 2]
    assert keys(bt.decide(views, [], NOW, cfg.UpdateConfig(parallelism=0))) == [1, 2, 3]

    fresh = task(4, node_name="a", generation=2, ended=NOW - 3)  # running for 3 s
    with_fresh = [*views, bt.SlotView(4, fresh)]
    d = bt.decide(with_fresh, [], NOW, cfg.UpdateConfig(delay=10.0))
    assert keys(d) == [] and d is not None
    # Stamped 3 s ago, in whole seconds: surely running for 2 s, so 8 s to go.
    assert d.requeue_after is not None and abs(d.requeue_after - 8.0) < 1e-6

    failed = [task(4, 2, state="failed", generation=2)]
    d = bt.decide(with_fresh, failed, NOW, cfg.UpdateConfig(max_failure_ratio=0.5))
    assert d is not None and d.state == bt.UPDATING  # 1 of 4 is tolerated
    d = bt.decide(with_fresh, failed, NOW, cfg.UpdateConfig(failure_action="continue"))
    assert keys(d) == [1]


def test_moves_come_after_dirty_slots_and_are_always_start_first() -> None:
    svc = changed(replicas=3, updateConfig={"parallelism": 0})
    tasks = [task(1, node_name="a"), task(2, 2, node_name="a", generation=2, template=NEW),
             task(3, 2, node_name="a", generation=2, template=NEW)]
    d = decide(svc, tasks, moves=(3,))
    assert d is not None
    assert [(r.key, r.order, r.reason) for r in d.replace] == [
        (1, "stop-first", bt.DIRTY), (3, "start-first", bt.MOVE)]


def test_global_service_rolls_one_node_at_a_time() -> None:
    svc = changed(mode="global")
    assert keys(decide(svc, [task("b"), task("a")])) == ["a"]


def test_update_config_is_read_from_the_spec_over_swarm_defaults() -> None:
    config, problems = cfg.UpdateConfig.from_spec({
        "parallelism": 2, "delay": "1m05s", "order": "start-first", "monitor": "500ms",
        "failureAction": "continue", "maxFailureRatio": 0.25})
    assert config == cfg.UpdateConfig(parallelism=2, delay=65.0, order="start-first",
                                      failure_action="continue", monitor=0.5,
                                      max_failure_ratio=0.25)
    assert problems == []
    assert cfg.UpdateConfig.from_spec(None) == (cfg.SWARM_DEFAULTS, [])
    _, problems = cfg.UpdateConfig.from_spec({"failureAction": "rollback"},
                                             "rollbackConfig")
    assert problems == ["spec.rollbackConfig.failureAction 'rollback': must be pause or "
                        "continue; using the default"]


def test_an_unreadable_update_config_field_keeps_its_default_and_says_so() -> None:
    svc = changed(updateConfig={"parallelism": -1, "delay": "soon", "order": "sideways"})
    config, problems = cfg.for_service_with_problems(svc)
    assert config == cfg.SWARM_DEFAULTS and len(problems) == 3
    assert problems[0] == ("spec.updateConfig.parallelism -1: must be an integer >= 0 "
                           "(0 = all at once); using the default")
    assert "spec.updateConfig.delay 'soon': invalid duration" in problems[1]


def test_parallelism_two_counts_the_batch_still_starting() -> None:
    svc = changed(replicas=6, updateConfig={"parallelism": 2})
    assert keys(decide(svc, old_tasks(6))) == [1, 2]
    tasks = [task(1, 2, node_name="a", generation=2, template=NEW, ended=NOW - 1),
             task(2, 2, node_name="a", state="starting", generation=2, template=NEW),
             *old_tasks(6)[2:]]
    assert keys(decide(svc, tasks)) == [3]


def test_delay_holds_the_next_batch_and_requeues_for_the_rest_of_it() -> None:
    svc = changed(replicas=4, updateConfig={"parallelism": 2, "delay": "10s"})
    tasks = [task(i, 2, node_name="a", generation=2, template=NEW, ended=NOW - 3)
             for i in (1, 2)] + old_tasks(4)[2:]
    d = decide(svc, tasks)
    assert keys(d) == [] and d is not None and d.requeue_after is not None
    assert abs(d.requeue_after - 8.0) < 1e-6
    # Level-triggered: a restarted controller at NOW + 8 sees the same tasks and goes on.
    assert keys(decide(svc, tasks, NOW + 7.9)) == []
    assert keys(decide(svc, tasks, NOW + 8)) == [3, 4]


def test_start_first_counts_the_overlap_as_in_flight() -> None:
    svc = changed(replicas=3, updateConfig={"order": "start-first"})
    d = decide(svc, old_tasks())
    assert d is not None and [(r.key, r.order) for r in d.replace] == [(1, "start-first")]
    # The replacement runs but the orchestrator has not stopped the old task yet.
    tasks = [*old_tasks(), task(1, 2, node_name="a", generation=2, template=NEW)]
    d = decide(svc, tasks)
    assert keys(d) == [] and d is not None and d.updated == 1
    tasks[0].spec["desiredState"] = "shutdown"
    assert keys(decide(svc, tasks)) == [2]


def test_start_first_changed_again_mid_overlap_replaces_the_newest_task() -> None:
    svc = changed(image={"image": "shoal/busybox:3.0"}, generation=3,
                  updateConfig={"order": "start-first"})
    tasks = [*old_tasks(), task(1, 2, node_name="a", state="starting", generation=2,
                                template=NEW)]
    [view] = [v for v in bt.views(tasks, taskspec.Wanted(svc), False) if v.key == 1]
    assert view.current.metadata.name == "web.1.2" and view.dirty
    assert [t.metadata.name for t in view.others] == ["web.1.1"]


def test_monitor_counts_failures_that_come_soon_after_the_task_was_made() -> None:
    early = task(1, 2, state="failed", generation=2, ended=CREATED + 2)
    late = task(2, 2, state="failed", generation=2, ended=CREATED + 60)
    rejected = task(3, 2, state="rejected", generation=2, ended=CREATED + 600)
    got = bt.failures([early, late, rejected], 2, monitor=5.0)
    assert [t.metadata.name for t in got] == ["web.1.2", "web.3.2"]
    assert len(bt.failures([early, late, rejected], 2)) == 3  # no monitor: all


def test_failure_action_continue_goes_past_a_failed_task() -> None:
    svc = changed(updateConfig={"failureAction": "continue"})
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    d = decide(svc, [bad, *old_tasks()[1:]])
    assert d is not None and d.state == bt.UPDATING and keys(d) == [2]


def test_max_failure_ratio_tolerates_that_share_of_failures() -> None:
    bad = task(1, 2, node_name="a", state="rejected", generation=2, template=NEW,
               ended=NOW - 1)
    tasks = [bad, *old_tasks(4)[1:]]
    d = decide(changed(replicas=4, updateConfig={"maxFailureRatio": 0.25}), tasks)
    assert d is not None and d.state == bt.UPDATING  # 1 of 4 is 0.25
    d = decide(changed(replicas=4, updateConfig={"maxFailureRatio": 0.2}), tasks)
    assert d is not None and d.state == bt.PAUSED


# --- the orchestrator's side ---

def test_orchestrator_leaves_dirty_running_tasks_alone() -> None:
    plan = slots.plan_replicated(changed(), old_tasks(), now=NOW, nodes=[node("a")])
    assert plan.empty


def test_orchestrator_ends_a_start_first_overlap_once_the_newer_task_runs() -> None:
    svc = changed(updateConfig={"order": "start-first"})
    tasks = [*old_tasks(), task(1, 2, node_name="a", state="starting", generation=2,
                                template=NEW)]
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert plan.empty and plan.overlaps
    tasks[-1].status.update(state="running", timestamp=NOW - 1)
    plan = slots.plan_replicated(svc, tasks, now=NOW, nodes=[node("a")])
    assert [(s.task.metadata.name, s.reason) for s in plan.shutdowns] == [
        ("web.1.1", "replaced by web.1.2 (start-first)")]
    assert not plan.overlaps and names(plan.creates) == []


def test_a_stop_first_replacement_starts_only_once_the_old_task_stopped() -> None:
    svc = changed()
    old = task(1, 1, node_name="a", desired="shutdown")
    new = task(1, 2, node_name="b", state="preparing", desired="preparing", generation=2,
               template=NEW)
    wanted = taskspec.Wanted(svc)
    [view] = bt.views([old, new], wanted, False)
    assert view.current is new
    assert not bt.ready_to_start(view, {"a", "b"})  # the old one still runs on a
    old.status["state"] = "shutdown"
    [view] = bt.views([old, new], wanted, False)
    assert bt.ready_to_start(view, {"a", "b"})
    # An old task on a node that is down will not report: no reason to wait for it.
    old.status["state"] = "running"
    [view] = bt.views([old, new], wanted, False)
    assert bt.ready_to_start(view, {"b"})
    # A replacement already desired running (start-first) is not held.
    new.spec["desiredState"] = "running"
    [view] = bt.views([old, new], wanted, False)
    assert not bt.ready_to_start(view, {"b"})
