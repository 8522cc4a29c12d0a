"""The fold rule: a node's report changes only its own, current task, and only forward."""

from __future__ import annotations

from shoal.controllers.fold import decide
from shoal.crds import resource


def task(uid: str = "u1", node: str | None = "n1", state: str = "assigned"
         ) -> resource.Resource:
    spec = {"nodeName": node} if node else {}
    obj = resource.new("Task", "web.1", None, spec=spec)
    obj.metadata.uid = uid
    obj.status["state"] = state
    return obj


def test_a_forward_report_of_the_assigned_node_is_written() -> None:
    verdict, status = decide.fold(task(), "n1", "u1", {"state": "running", "message": ""})
    assert verdict == "write" and status == {"state": "running", "message": ""}


def test_a_report_the_task_already_holds_or_that_goes_back_is_done() -> None:
    assert decide.fold(task(state="running"), "n1", "u1", {"state": "running"}) == (
        "done", None)
    assert decide.fold(task(state="shutdown"), "n1", "u1", {"state": "running"}) == (
        "done", None)


def test_a_report_for_a_task_the_cache_does_not_show_as_its_own_waits() -> None:
    running = {"state": "running"}
    assert decide.fold(None, "n1", "u1", running) == ("wait", None)  # not seen yet
    assert decide.fold(task(node=None), "n1", "u1", running) == ("wait", None)  # unassigned
    assert decide.fold(task(uid="u0"), "n1", "u1", running) == ("wait", None)  # namesake
    # Another node cannot speak for this task.
    assert decide.fold(task(), "n2", "u1", running) == ("wait", None)


REPORT = {"role": "manager", "labels": {"zone": "a"},
          "status": {"state": "ready", "message": "", "address": "10.0.0.2",
                     "logsEndpoint": "http://10.0.0.2:4790",
                     "conditions": [{"type": "Firewall", "status": "True"}]}}


def test_the_first_node_report_creates_the_node_with_its_role() -> None:
    verdict, made = decide.fold_node(None, "n1", REPORT)
    assert verdict == "create" and made is not None
    assert made.spec == {"role": "manager", "availability": "active"}
    assert made.metadata.labels == {"zone": "a"} and made.status["state"] == "ready"


def test_a_report_updates_labels_and_agent_fields_and_leaves_the_rest() -> None:
    node = resource.new("Node", "n1", spec={"role": "worker", "availability": "drain"},
                        labels={"zone": "b", "team": "x"})
    node.status = {"state": "down", "message": "heartbeat lease expired", "address": "old",
                   "dataplane": "ipvs",
                   "conditions": [{"type": "Ready", "status": "False"},
                                  {"type": "Firewall", "status": "True",
                                   "lastTransitionTime": "t0"}]}
    verdict, out = decide.fold_node(node, "n1", REPORT)
    assert verdict == "update" and out is not None
    assert out.spec == node.spec  # spec is users' and controllers' once the Node exists
    assert out.metadata.labels == {"zone": "a", "team": "x"}
    assert (out.status["state"], out.status["address"]) == ("down", "10.0.0.2")
    assert "dataplane" not in out.status  # a feature of the last run, not reported now
    assert out.status["conditions"] == [
        {"type": "Ready", "status": "False"},
        {"type": "Firewall", "status": "True", "lastTransitionTime": "t0"}]
    assert decide.fold_node(out, "n1", REPORT) == ("done", None)
