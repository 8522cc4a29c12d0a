"""Rebalancing's part of an updater pass (``controllers/updater/moves.py``): off unless
enabled or asked for; held while an update is in flight; the moves of a 3/3/0 service;
a request handled only once the service is steady and even; the status it reports."""

from __future__ import annotations

from typing import Any

from shoal.controllers.updater import moves as mv
from shoal.controllers.updater import rebalance as rb
from shoal.crds.resource import Resource
from tests.unit.orchestrator_support import NOW, node, service, task

NODES = [node("n1"), node("n2"), node("n3")]
REQUEST = "2023-11-14T22:10:00Z"


def web(placement: dict[str, Any] | None = None, request: str | None = None,
        **status: Any) -> Resource:
    """``web`` with ``placement.rebalance``, a request and ``status`` fields."""
    svc = service(replicas=6)
    if placement is not None:
        svc.spec["placement"] = {"rebalance": placement}
    if request is not None:
        svc.metadata.annotations[rb.REQUEST] = request
    svc.status.update(status)
    return svc


def three_three(**extra: Any) -> list[Resource]:
    return [task(slot, node_name="n1" if slot <= 3 else "n2", **extra)
            for slot in range(1, 7)]


def clean(task: Resource) -> bool:
    return False


def test_off_unless_enabled_or_asked() -> None:
    assert mv.plan(web(), three_three(), NODES, NOW, clean) == mv.Pass({}, False, None)
    assert mv.plan(web({"enabled": False}), three_three(), NODES, NOW, clean).slots == {}


def test_a_three_three_service_moves_one_task_off_each_full_node() -> None:
    step = mv.plan(web({"enabled": True}), three_three(), NODES, NOW, clean)
    assert step.slots == {3: "n1", 6: "n2"} and step.active
    # The moves count once their replacements exist (the next pass).
    assert step.status == {"moves": 0}


def test_held_while_an_update_is_in_flight() -> None:
    held = mv.plan(web({"enabled": True}), three_three(), NODES, NOW, lambda t: True)
    assert held.slots == {} and held.status == {"message": "waiting for the update to finish"}
    updating = web({"enabled": True}, update={"state": "updating"})
    assert mv.plan(updating, three_three(), NODES, NOW, clean).slots == {}
    paused = web({"enabled": True})
    paused.spec["paused"] = True
    assert mv.plan(paused, three_three(), NODES, NOW, clean).slots == {}
    done = web({"enabled": True}, update={"state": "completed"})
    assert mv.plan(done, three_three(), NODES, NOW, clean).slots == {3: "n1", 6: "n2"}


def test_a_request_is_handled_once_steady_and_even() -> None:
    # Asked for, on a service that does not rebalance by itself: it moves...
    asked = web(request=REQUEST)
    assert mv.plan(asked, three_three(), NODES, NOW, clean).slots == {3: "n1", 6: "n2"}
    # ... not while a move's replacement starts beside the task it replaces ...
    moving = [*three_three()[:5], task(6, node_name="n2"),
              task(6, 2, node_name="n3", state="starting", notes={rb.MOVED_FROM: "n2"})]
    moving[-1].metadata.creationTimestamp = "2023-11-14T22:10:01Z"
    step = mv.plan(asked, moving, NODES, NOW, clean)
    assert step.slots == {} and step.status is not None and "handled" not in step.status
    # ... and is handled once it runs 2/2/2, counting the moves made for it.
    even = [task(s, node_name=n) for s, n in ((1, "n1"), (2, "n1"), (4, "n2"), (5, "n2"))]
    even += [task(3, 2, node_name="n3", notes={rb.MOVED_FROM: "n1"}),
             task(6, 2, node_name="n3", notes={rb.MOVED_FROM: "n2"}),
             task(3, 1, node_name="n1", state="shutdown", desired="shutdown")]
    for t in even[4:6]:
        t.metadata.creationTimestamp = "2023-11-14T22:10:01Z"
    done = mv.plan(asked, even, NODES, NOW, clean)
    assert done.slots == {} and done.status == {
        "handled": REQUEST, "moves": 2, "lastMoveAt": "2023-11-14T22:10:01Z"}
    # Handled: nothing more to write, and the service no longer rebalances.
    after = web(request=REQUEST, rebalance=done.status)
    assert mv.plan(after, even, NODES, NOW, clean) == mv.Pass({}, False, None)


def test_global_services_do_not_rebalance() -> None:
    svc = web({"enabled": True})
    svc.spec["mode"] = "global"
    assert not mv.plan(svc, [task("n1")], NODES, NOW, clean).active
