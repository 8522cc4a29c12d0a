"""The ERROR cell of ``service ps`` and ``get -o wide``: errors, then what a controller
could not do (False conditions), then the scheduler's explanation."""

from __future__ import annotations

from shoal.cli import taskview
from shoal.crds import conditions, resource


def task(state: str = "preparing", **status: object) -> resource.Resource:
    obj = resource.new("Task", "web.2.x", "default",
                       {"serviceName": "web", "slot": 2, "desiredState": "running"})
    obj.status = {"state": state, **status}
    return obj


def test_a_failed_condition_is_the_error_of_a_waiting_task() -> None:
    t = task()
    assert taskview.error_cell(t) == ""
    conditions.set_condition(t, "Allocated", False, "AllocationFailed",
                             "network appnet not found")
    assert taskview.error_cell(t) == "network appnet not found"
    # Once allocated the condition turns true: no error.
    conditions.set_condition(t, "Allocated", True, "Allocated", "")
    assert taskview.error_cell(t) == ""


def test_the_task_s_own_error_comes_first() -> None:
    t = task("failed", err="task: non-zero exit (1)")
    conditions.set_condition(t, "Allocated", False, "AllocationFailed", "full")
    assert taskview.error_cell(t) == "task: non-zero exit (1)"
    pending = task("pending", message="no suitable node (constraint ...)")
    assert taskview.error_cell(pending) == "no suitable node (constraint ...)"


def test_failed_conditions_of_a_service_are_joined() -> None:
    svc = resource.new("Service", "web", "default", {"template": {"image": "x"}})
    assert taskview.failed_conditions(svc) == ""
    conditions.set_condition(svc, "Valid", True, "Reconciled", "")
    conditions.set_condition(svc, "Allocated", False, "AllocationFailed",
                             "network appnet not found")
    conditions.set_condition(svc, "Other", False, "Because")
    assert taskview.failed_conditions(svc) == "network appnet not found; Because"
