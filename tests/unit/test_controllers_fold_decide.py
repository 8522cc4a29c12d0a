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
