"""The chaos harness's invariant checker (bench/chaoslib/invariants.py), fed revisions by
hand: each invariant is reported with its keys and revision when broken, and is quiet
for what the update rules and a start-first overlap allow."""

from __future__ import annotations

from typing import Any

from bench.chaoslib.invariants import Checker

REG = "/c/registry/"
T1 = {"image": "busybox:1"}
T2 = {"image": "busybox:2"}


def service(replicas: int = 3, template: dict[str, Any] | None = None,
            order: str = "stop-first", parallelism: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "web", "uid": "s1"},
            "spec": {"replicas": replicas, "template": template or T1,
                     "updateConfig": {"order": order, "parallelism": parallelism}}}


def task(slot: int, n: int = 1, state: str = "running", desired: str = "running",
         template: dict[str, Any] | None = None, replaced_by: str | None = None,
         uid: str | None = None) -> tuple[str, dict[str, Any]]:
    name = f"web.{slot}.{n}"
    annotations = {"shoal.io/replaced-by": replaced_by} if replaced_by else {}
    return f"{REG}tasks/default/{name}", {
        "metadata": {"name": name, "uid": uid or name, "annotations": annotations},
        "spec": {"serviceName": "web", "slot": slot, "desiredState": desired,
                 "template": template or T1},
        "status": {"state": state}}


def converged_checker(replicas: int = 3, **kw: Any) -> Checker:
    c = Checker(REG)
    c.apply(10, [(f"{REG}services/default/web", service(replicas, **kw))])
    c.apply(11, [task(s) for s in range(1, replicas + 1)])
    assert c.is_converged("default/web") and not c.violations
    return c


def test_a_service_scaled_down_is_converged_whichever_slots_it_kept() -> None:
    # Found by bench.chaos --seed 161: `cache` scaled 4 -> 3 kept slots 1, 2 and 4 (Swarm
    # removes slots from the most loaded nodes, not the highest), ran all three, and the
    # checker, which wanted slots 1..3, called it unconverged for the whole settle.
    c = Checker(REG)
    c.apply(10, [(f"{REG}services/default/web", service(4))])
    c.apply(11, [task(s) for s in range(1, 5)])
    c.apply(12, [(f"{REG}services/default/web", service(3)),
                 task(3, desired="shutdown", state="shutdown")])
    assert c.is_converged("default/web") and c.unconverged() == []
    # Still not converged with one too many or too few, or two in one slot.
    c.apply(13, [task(5, state="running")])
    assert not c.is_converged("default/web")
    c.apply(14, [task(5, desired="shutdown", state="shutdown"),
                 task(4, desired="shutdown", state="shutdown")])
    assert not c.is_converged("default/web")
    c.apply(15, [task(2, n=2, replaced_by="web.2.1")])
    assert not c.is_converged("default/web")


def test_two_live_tasks_in_a_slot_are_reported_with_their_keys() -> None:
    c = converged_checker()
    c.apply(12, [task(2, n=2, state="starting")])
    [v] = c.violations
    assert v.kind == "slot" and v.revision == 12
    assert v.keys == (f"{REG}tasks/default/web.2.1", f"{REG}tasks/default/web.2.2")


def test_start_first_overlap_and_ended_tasks_do_not_count() -> None:
    c = converged_checker(order="start-first")
    c.apply(12, [task(2, replaced_by="web.2.2"), task(2, n=2, state="starting")])
    c.apply(13, [task(3, state="failed"), task(3, n=2, state="starting")])
    assert c.violations == []


def test_a_scale_down_that_kept_slots_1_and_3_has_converged() -> None:
    # Found by the etcd-full chaos run (seed 16): Swarm's scale-down removes slots from
    # the nodes running the most replicas first, not the highest slot; the service was
    # at its spec but was reported unconverged for the whole settle.
    c = converged_checker()
    c.apply(12, [(f"{REG}services/default/web", service(2))])
    c.apply(13, [task(2, desired="shutdown")])
    c.apply(14, [task(2, state="complete", desired="shutdown")])
    assert c.is_converged("default/web")
    c.apply(15, [task(3, n=2, state="starting")])  # a second live task in slot 3: not
    assert not c.is_converged("default/web")


def test_a_task_state_moving_backwards_is_reported() -> None:
    c = converged_checker()
    c.apply(12, [task(1, state="starting")])
    c.apply(13, [task(2, desired="shutdown")])
    c.apply(14, [task(2, desired="running")])
    kinds = [(v.kind, v.revision) for v in c.violations if v.kind == "monotonic"]
    assert kinds == [("monotonic", 12), ("monotonic", 14)]


def test_a_deleted_object_coming_back_with_its_uid_is_reported() -> None:
    c = converged_checker()
    key, obj = task(1)
    c.apply(12, [(key, None)])
    c.apply(13, [(key, obj)])
    assert [(v.kind, v.keys) for v in c.violations if v.kind == "resurrected"] == [
        ("resurrected", (key,))]
    # The same name with a new uid is a new object, not a resurrection.
    c2 = converged_checker()
    c2.apply(12, [(key, None)])
    c2.apply(13, [task(1, uid="fresh")])
    assert not [v for v in c2.violations if v.kind == "resurrected"]


def test_a_service_deleted_behind_the_workloads_back_is_lost() -> None:
    c = converged_checker()
    key = c.service_key("web")
    c.owned.add(key)
    c.apply(12, [(key, None)])
    assert [v.kind for v in c.violations] == ["lost"]
    c2 = converged_checker()
    c2.apply(12, [(key, None)])  # not owned: the workload deleted it
    assert c2.violations == []


def test_running_floor_follows_the_update_rules() -> None:
    c = converged_checker()
    # A stop-first rollout with parallelism 1: one slot at a time may be down.
    c.apply(12, [(c.service_key("web"), service(template=T2))])
    c.apply(13, [task(1, desired="shutdown", state="running")])
    assert c.violations == []
    c.apply(14, [task(2, desired="shutdown", state="running")])
    [v] = c.violations
    assert v.kind == "floor" and "1 running" in v.detail and "no fewer than 2" in v.detail


def test_a_node_fault_suspends_the_floor_until_converged_again() -> None:
    c = converged_checker()
    c.disturb(True, "node faults")
    c.apply(12, [task(1, state="orphaned"), task(2, state="orphaned")])
    c.disturb(False, "node faults")
    c.apply(13, [task(3, state="orphaned")])  # not converged since: no floor yet
    assert c.violations == []
    assert c.unconverged() == ["default/web"]
    c.apply(14, [task(s, n=2) for s in (1, 2, 3)])
    assert c.unconverged() == [] and c.violations == []


def test_node_journal_reader_counts_only_workloads_still_running(tmp_path: Any) -> None:
    # A compacted journal restarts stopped workloads as "start" lines in state exited.
    from bench.chaoslib.hosts import running_workloads

    journal = tmp_path / "n0.journal"
    journal.write_text(
        '{"op":"start","w":{"uid":"a","name":"web.1.1","state":"running"}}\n'
        '{"op":"start","w":{"uid":"b","name":"web.2.1","state":"exited"}}\n'
        '{"op":"start","w":{"uid":"c","name":"web.3.1","state":"created"}}\n'
        '{"op":"stop","uid":"c","code":0}\n'
        '{"op":"start","w":{"uid":"d","name":"web.4.1","state":"running",'
        '"exit_at":1.0}}\n'
        '{"op":"sta')  # a torn last line
    assert sorted(running_workloads(journal)) == ["a"]


def test_running_task_missing_from_its_node_is_reported_after_two_looks(tmp_path: Any) -> None:
    from bench.chaoslib.hosts import JournalHost, RunningWatch

    c = converged_checker(replicas=2)
    node = {"metadata": {"name": "n0", "uid": "n0"}, "status": {"state": "ready"}}
    key1, t1 = task(1)
    key2, t2 = task(2)
    t1["spec"]["nodeName"] = t2["spec"]["nodeName"] = "n0"
    c.apply(12, [(f"{REG}nodes/n0", node), (key1, t1), (key2, t2)])
    journal = tmp_path / "n0.journal"
    journal.write_text('{"op":"start","w":{"uid":"web.1.1","name":"web.1.1",'
                       '"state":"running"}}\n')
    watch = RunningWatch(c, {"n0": JournalHost(journal)})
    watch.look()
    assert watch.violations == []  # one look may fall between a stop and its report
    watch.look()
    [v] = watch.violations
    assert v.kind == "host" and v.keys == (key2,)
    # A write in between (the agent reporting) clears the suspicion.
    c2 = converged_checker(replicas=2)
    c2.apply(12, [(f"{REG}nodes/n0", node), (key1, t1), (key2, t2)])
    watch2 = RunningWatch(c2, {"n0": JournalHost(journal)})
    watch2.look()
    c2.apply(13, [(key2, {**t2, "status": {"state": "shutdown"}})])
    watch2.look()
    assert watch2.violations == []


def test_replacements_still_starting_are_within_the_rollout_allowance() -> None:
    # Parallelism 0 (all at once): every old task is stopped, the new ones (of the new
    # template) are not running yet; still the rollout, not a drop below the floor.
    c = converged_checker(parallelism=0)
    c.apply(12, [(c.service_key("web"), service(template=T2, parallelism=0))])
    c.apply(13, [task(s, desired="shutdown") for s in (1, 2, 3)]
            + [task(s, n=2, state="starting", template=T2) for s in (1, 2, 3)])
    assert c.violations == []
    c.apply(14, [task(s, n=2, template=T2) for s in (1, 2, 3)])
    assert c.unconverged() == []
    # Converged on the new template: a drop now is below the floor.
    c.apply(15, [task(1, n=2, state="starting", template=T2)])
    assert [v.kind for v in c.violations] == ["monotonic", "floor"]


def on_node(item: tuple[str, dict[str, Any]], node: str,
            reachable: bool = True) -> tuple[str, dict[str, Any]]:
    key, obj = item
    obj["spec"]["nodeName"] = node
    if not reachable:
        obj["status"]["conditions"] = [{"type": "NodeReachable", "status": "False"}]
    return key, obj


def test_a_cut_off_nodes_tasks_are_shown_unknown_and_its_replaced_ones_are_stale() -> None:
    # What the partition figures read: a down node's unended tasks show `unknown`; a task
    # the controllers shut down while its node was away stays stale until it has ended.
    c = converged_checker(2)
    c.apply(12, [on_node(task(1), "n0", reachable=False), on_node(task(2), "n1")])
    assert set(c.shown_states("n0").values()) == {"unknown"}
    assert c.shown_states("n1") == {f"{REG}tasks/default/web.2.1": "running"}
    c.apply(13, [on_node(task(1, desired="shutdown"), "n0", reachable=False)])
    assert c.stale_tasks("n0") == [f"{REG}tasks/default/web.1.1"]
    c.apply(14, [on_node(task(1, state="shutdown", desired="shutdown"), "n0")])
    assert c.stale_tasks("n0") == [] and c.shown_states("n0") == {}
