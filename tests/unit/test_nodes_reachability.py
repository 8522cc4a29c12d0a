"""The NodeReachable decisions (pure): which tasks of a down node show ``unknown``."""

from __future__ import annotations

from shoal.controllers.nodes import reachability
from shoal.crds import resource
from shoal.crds import taskstates as ts


def node(state: str) -> resource.Resource:
    n = resource.new("Node", "n1", spec={"role": "worker", "availability": "active"})
    n.status = {"state": state, "message": "heartbeat lease expired"}
    return n


def task(state: str) -> resource.Resource:
    t = resource.new("Task", "web.1.abc", "default", spec={"nodeName": "n1"})
    t.status = {"state": state}
    return t


def test_a_down_nodes_live_task_is_marked_and_shown_unknown() -> None:
    t = task(ts.RUNNING)
    assert reachability.change(t, node("down")) == "mark"
    assert reachability.apply(t, node("down"))
    assert ts.shown_state(t) == ts.UNKNOWN and ts.observed_state(t) == ts.RUNNING
    assert "node n1 is down (heartbeat lease expired)" in t.status["conditions"][0]["message"]
    assert reachability.change(t, node("down")) is None  # level: nothing more to do


def test_the_mark_comes_off_when_the_node_is_ready_and_nothing_else_changes() -> None:
    t = task(ts.RUNNING)
    t.status["conditions"] = [{"type": "Other", "status": "False"}]
    reachability.apply(t, node("down"))
    assert reachability.apply(t, node("ready"))
    assert t.status["conditions"] == [{"type": "Other", "status": "False"}]
    assert ts.shown_state(t) == ts.RUNNING


def test_an_ended_task_keeps_its_last_word_and_a_removed_node_changes_nothing() -> None:
    ended = task(ts.FAILED)
    assert reachability.change(ended, node("down")) is None
    assert ts.shown_state(ended) == ts.FAILED
    marked = task(ts.RUNNING)
    reachability.apply(marked, node("down"))
    assert reachability.change(marked, None) is None
    assert ts.shown_state(marked) == ts.UNKNOWN
    # A task marked while live that then ends (its node came back and said so) shows
    # its end, even before the mark is taken off.
    marked.status["state"] = ts.SHUTDOWN
    assert ts.shown_state(marked) == ts.SHUTDOWN
