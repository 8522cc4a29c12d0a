"""Whether a task's node can vouch for it: pure decisions for the ``NodeReachable`` condition.

A task's state comes from its node's agent. Once that node is down (its heartbeat lease
expired: partitioned, powered off, its agent killed), the last report — usually
``running`` — is a guess: the task may have died with the machine or may still run cut
off. Swarm keeps showing ``Running``; Shoal says ``unknown`` until the node is back, as
kubectl shows a pod on a lost node. The nodes controller, which decides ready/down,
marks the node's live tasks with ``NodeReachable=False`` and takes the mark off when the
node is ready again. The state itself is left alone (states only move forward); readers
use ``taskstates.shown_state``.

Level-triggered and idempotent: ``change`` compares one task with its node as they are
now, so repeated or missed events, relists and a new leader all reach the same marks.
"""

from __future__ import annotations

from typing import Final, Literal

from shoal.crds import conditions
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource

DOWN: Final = "down"
REASON_DOWN: Final = "NodeDown"

Change = Literal["mark", "unmark"]


def change(task: Resource, node: Resource | None) -> Change | None:
    """What ``task`` needs given its node: mark it, take the mark off, or nothing.

    A task that had ended keeps its last word (no mark). A node that is gone altogether
    (``node rm``) changes nothing: its tasks keep whatever mark they had, since nobody
    can vouch for them either way.
    """
    if node is None:
        return None
    marked = _marked(task)
    down = node.status.get("state") == DOWN
    if down and ts.is_live(task) and not marked:
        return "mark"
    if marked and not down:
        return "unmark"
    return None


def apply(task: Resource, node: Resource | None) -> bool:
    """Make ``task``'s condition match ``node`` (in place); True if it changed."""
    what = change(task, node)
    if what == "mark":
        name = task.spec.get("nodeName")
        why = str((node.status.get("message") if node is not None else "") or "node down")
        conditions.set_condition(task, ts.NODE_REACHABLE, False, REASON_DOWN,
                                 f"node {name} is down ({why}): the task's state is unknown "
                                 "until it reports again")
        return True
    if what == "unmark":
        task.status["conditions"] = [
            c for c in task.status.get("conditions") or ()
            if not (isinstance(c, dict) and c.get("type") == ts.NODE_REACHABLE)]
        if not task.status["conditions"]:
            del task.status["conditions"]
        return True
    return False


def _marked(task: Resource) -> bool:
    for cond in task.status.get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == ts.NODE_REACHABLE:
            return cond.get("status") == "False"
    return False
