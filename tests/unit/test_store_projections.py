"""Projections: which keys a Task or Service is copied to, what the copies hold, and when
a write must rewrite or delete them (pure; the store's use of it is in integration)."""

from __future__ import annotations

import orjson

from shoal.crds import resource
from shoal.store import codec, projections

P = "/shoal"


def task(node: str | None = "n1", networks: bool = True, state: str | None = None,
         desired: str = "running") -> resource.Resource:
    spec: dict[str, object] = {"serviceName": "web", "slot": 1, "desiredState": desired,
                               "template": {"image": "x", "env": ["TOKEN=secret"],
                                            "secrets": [{"source": "s"}]}}
    if node is not None:
        spec["nodeName"] = node
    if networks:
        spec["networks"] = [{"network": "front", "address": "10.0.1.5/24"}]
    obj = resource.new("Task", "web.1", "prod", spec=spec,
                       labels={"shoal.io/service": "web", "team": "a"})
    obj.metadata.uid = "u1"
    if state:
        obj.status["state"] = state
    return obj


def memo(obj: resource.Resource) -> projections.Memo:
    return projections.memo_of(obj, codec.spec_digest(obj.spec))


def test_an_assigned_task_projects_to_its_node_and_the_dataplane() -> None:
    out = projections.projected(P, task(state="running"))
    node_key = b"/shoal/nodes/n1/tasks/prod/web.1"
    dp_key = b"/shoal/dataplane/tasks/prod/web.1"
    assert set(out) == {node_key, dp_key}
    mine = orjson.loads(out[node_key])
    assert mine["spec"]["template"]["env"] == ["TOKEN=secret"]  # the node runs it
    assert mine["status"] == {} and mine["metadata"]["uid"] == "u1"
    dp = orjson.loads(out[dp_key])
    assert dp["spec"] == {"nodeName": "n1", "desiredState": "running", "serviceName": "web",
                          "slot": 1, "networks": [{"network": "front",
                                                   "address": "10.0.1.5/24"}]}
    assert dp["status"] == {"state": "running"}
    assert dp["metadata"]["labels"] == {"shoal.io/service": "web"}
    assert b"secret" not in out[dp_key]  # no env, no secret references for other nodes


def test_unassigned_or_unplaceable_tasks_project_nowhere_and_netless_ones_skip_dataplane(
) -> None:
    assert projections.projected(P, task(node=None)) == {}
    assert projections.projected(P, task(node="a/b")) == {}  # cannot be a key segment
    assert list(projections.projected(P, task(networks=False))) == [
        b"/shoal/nodes/n1/tasks/prod/web.1"]


def test_a_service_projects_its_endpoint_not_its_template() -> None:
    svc = resource.new("Service", "web", None, spec={
        "template": {"image": "x", "env": ["K=v"]}, "networks": [{"target": "front"}],
        "endpoint": {"mode": "vip"}})
    svc.status["endpoint"] = {"vips": {"front": "10.0.1.2"}}
    svc.status["replicas"] = 3
    out = projections.projected(P, svc)
    value = orjson.loads(out[b"/shoal/dataplane/services/default/web"])
    assert value["spec"] == {"networks": [{"target": "front"}], "endpoint": {"mode": "vip"}}
    assert value["status"] == {"endpoint": {"vips": {"front": "10.0.1.2"}}}


def test_status_writes_before_running_change_nothing() -> None:
    old = task(state="assigned")
    for state in ("accepted", "preparing", "starting"):
        new = task(state=state)
        assert projections.changes(P, memo(old), new, memo(new)) == ({}, [])


def test_running_and_the_end_rewrite_the_dataplane_copy() -> None:
    old = task(state="starting")
    new = task(state="running")
    puts, stale = projections.changes(P, memo(old), new, memo(new))
    assert b"/shoal/dataplane/tasks/prod/web.1" in puts and stale == []


def test_assignment_puts_and_a_new_node_deletes_the_old_copy() -> None:
    pending = task(node=None)
    assigned = task()
    puts, stale = projections.changes(P, memo(pending), assigned, memo(assigned))
    assert b"/shoal/nodes/n1/tasks/prod/web.1" in puts and stale == []
    moved = task(node="n2")
    puts, stale = projections.changes(P, memo(assigned), moved, memo(moved))
    assert b"/shoal/nodes/n2/tasks/prod/web.1" in puts
    assert stale == [b"/shoal/nodes/n1/tasks/prod/web.1"]


def test_losing_networks_deletes_the_dataplane_copy() -> None:
    old, new = task(), task(networks=False)
    _, stale = projections.changes(P, memo(old), new, memo(new))
    assert stale == [b"/shoal/dataplane/tasks/prod/web.1"]


def test_unknown_provenance_puts_everything() -> None:
    new = task()
    puts, stale = projections.changes(P, None, new, memo(new))
    assert len(puts) == 2 and stale == []


def test_a_delete_removes_the_copies_of_both_the_stored_and_the_given_node() -> None:
    stored = memo(task(node="n1"))
    keys = projections.deleted(P, task(node="n2"), stored)
    assert set(keys) == {b"/shoal/nodes/n1/tasks/prod/web.1",
                         b"/shoal/nodes/n2/tasks/prod/web.1",
                         b"/shoal/dataplane/tasks/prod/web.1"}


def test_decoding_remembers_the_memo_and_with_status_keeps_it() -> None:
    obj = task(state="starting")
    stored = codec.decode(codec.encode(obj), 7)
    assert codec.stored_memo(stored) == memo(obj)
    running = codec.with_status(stored, {"state": "running"})
    assert codec.stored_memo(running) == memo(obj)  # what is stored, not what is written


def test_node_keys_are_taken_apart_and_other_shapes_refused() -> None:
    nodes = projections.nodes_prefix(P)
    key = projections.report_key(P, "n1", "prod", "web.1")
    assert key == b"/shoal/reports/n1/prod/web.1"
    reports = projections.reports_prefix(P)
    assert projections.parse_report_key(reports, key) == ("n1", "prod", "web.1")
    assert projections.parse_report_key(reports, key + b"/x") is None
    task_key = projections.node_task_key(P, "n1", "prod", "web.1")
    assert projections.parse_node_key(nodes, task_key) == ("n1", "tasks", "prod", "web.1")
    assert projections.parse_node_key(nodes, b"/shoal/nodes/n1/status") is None
    assert projections.parse_node_key(nodes, b"/shoal/nodes/n1/tasks//x") is None


def test_reports_round_trip_and_garbage_is_none() -> None:
    value = projections.encode_report("u1", {"state": "running"})
    assert projections.decode_report(value) == ("u1", {"state": "running"})
    for bad in (b"{nope", b"[]", b'{"uid": 1, "status": {}}', b'{"uid": "u", "status": 3}'):
        assert projections.decode_report(bad) is None


def test_status_writes_of_a_task_without_networks_rewrite_nothing() -> None:
    old, new = task(networks=False, state="starting"), task(networks=False, state="running")
    assert projections.changes(P, memo(old), new, memo(new)) == ({}, [])


def test_a_status_change_rewrites_only_the_dataplane_copy() -> None:
    old, new = task(state="running"), task(state="failed")
    puts, stale = projections.changes(P, memo(old), new, memo(new))
    assert list(puts) == [b"/shoal/dataplane/tasks/prod/web.1"] and stale == []
