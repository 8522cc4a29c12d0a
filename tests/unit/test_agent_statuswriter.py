"""shoal.agent.statuswriter: a status never moves backwards or out of an end state."""

from __future__ import annotations

from shoal.agent.statuswriter import merge_status


def test_forward_moves_are_written_backward_ones_are_not() -> None:
    status = {"state": "preparing", "timestamp": "t1"}
    assert merge_status(status, {"state": "running", "timestamp": "t2"}) == {
        "state": "running", "timestamp": "t2"}
    assert merge_status({"state": "running"}, {"state": "preparing", "timestamp": "t"}) is None


def test_an_end_state_is_final_but_may_gain_details() -> None:
    ended = {"state": "failed", "timestamp": "t1"}
    assert merge_status(ended, {"state": "complete", "timestamp": "t2"}) is None
    assert merge_status(ended, {"state": "failed", "exitCode": 3, "timestamp": "t2"}) == {
        "state": "failed", "timestamp": "t1", "exitCode": 3}
    assert merge_status(ended, {"state": "failed", "timestamp": "t3"}) is None
