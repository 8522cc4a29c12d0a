"""What a node's report does to a Task's status: a pure decision.

A report is folded only into the task it is about (same uid: a namesake created since
is not it) and only when the reporting node is the one the task is assigned to: a node
can write nothing but its own reports, and this check keeps it from speaking for tasks
it does not run. The state then only moves forward (``taskstates.merge_status``).

The controller's cache may lag the report: the agent learns of its task from the
projection the store wrote with the assignment, and can report before the controller's
task informer has seen that assignment. So a report whose task is unknown, another uid
or not (yet) assigned to its node *waits* for the next change of that task, instead of
being dropped; it is let go once folded, or once its agent deletes it.
"""

from __future__ import annotations

from typing import Any, Literal

from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource

Verdict = tuple[Literal["write", "done", "wait"], dict[str, Any] | None]


def fold(task: Resource | None, node: str, uid: str, report: dict[str, Any]) -> Verdict:
    """("write", status) to write, ("done", None) when the task already says it, or
    ("wait", None) until the cache shows the task this report is about."""
    if task is None or task.metadata.uid != uid or task.spec.get("nodeName") != node:
        return "wait", None
    status = ts.merge_status(task.status, report)
    return ("done", None) if status is None else ("write", status)
