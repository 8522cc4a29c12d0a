"""Task states (``shoal.crds.taskstates``): the forward-only state machine and the readers
every controller and the agent use."""

from __future__ import annotations

import pytest

from shoal.crds import taskstates as ts
from shoal.crds.resource import new
from tests.unit.orchestrator_support import NOW, task


def test_states_only_move_forward_and_ends_are_final() -> None:
    assert ts.STATES[0] == "new" and ts.STATES[6] == "running"
    assert ts.can_transition("new", "pending")
    assert ts.can_transition("pending", "running")  # skipping ahead is fine
    assert not ts.can_transition("running", "starting")
    assert not ts.can_transition("running", "running")
    assert ts.can_transition("running", "failed")
    assert not ts.can_transition("failed", "shutdown")  # terminal is final
    assert not ts.can_transition("complete", "orphaned")
    assert [s for s in ts.STATES if ts.is_terminal(s)] == [
        "complete", "failed", "shutdown", "rejected", "orphaned"]
    with pytest.raises(ValueError, match='unknown task state "exploded"'):
        ts.can_transition("running", "exploded")


def test_task_readers() -> None:
    t = task(1, desired="shutdown", state="running", ended=NOW)
    assert not ts.is_active_desired(t) and ts.is_live(t) and not ts.has_ended(t)
    assert ts.is_active_desired(task(1, desired="pending"))
    assert ts.is_active_desired(new("Task", "t"))  # desiredState defaults to running
    assert ts.observed_state(new("Task", "t")) == "new"
    assert ts.service_name(t) == "web" and ts.task_key(t) == "default/web.1.1"
    assert ts.parse_timestamp("2023-11-14T22:13:20Z") == NOW
    assert ts.parse_timestamp("2023-11-14T22:13:20.5+00:00") == NOW + 0.5
    assert ts.parse_timestamp(str(NOW)) == NOW
    assert ts.parse_timestamp("yesterday") is None and ts.parse_timestamp(None) is None


def test_merge_status_moves_forward_only() -> None:
    status = {"state": "preparing", "timestamp": "t1"}
    assert ts.merge_status(status, {"state": "running", "timestamp": "t2"}) == {
        "state": "running", "timestamp": "t2"}
    assert ts.merge_status({"state": "running"}, {"state": "preparing", "timestamp": "t"}) is None
    assert ts.merge_status(status, {"state": "bogus"}) is None  # a report naming no state


def test_merge_status_keeps_an_end_state_but_takes_its_details() -> None:
    ended = {"state": "failed", "timestamp": "t1"}
    assert ts.merge_status(ended, {"state": "complete", "timestamp": "t2"}) is None
    assert ts.merge_status(ended, {"state": "failed", "exitCode": 3, "timestamp": "t2"}) == {
        "state": "failed", "timestamp": "t1", "exitCode": 3}
    assert ts.merge_status(ended, {"state": "failed", "timestamp": "t3"}) is None
