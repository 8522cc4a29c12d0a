"""What a node's reports do to its Tasks' status and to its Node: pure decisions.

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

from typing import Any, Final, Literal

from shoal.crds import taskstates as ts
from shoal.crds.resource import ObjectMeta, Resource

Verdict = tuple[Literal["write", "done", "wait"], dict[str, Any] | None]


def fold(task: Resource | None, node: str, uid: str, report: dict[str, Any]) -> Verdict:
    """("write", status) to write, ("done", None) when the task already says it, or
    ("wait", None) until the cache shows the task this report is about."""
    if task is None or task.metadata.uid != uid or task.spec.get("nodeName") != node:
        return "wait", None
    status = ts.merge_status(task.status, report)
    return ("done", None) if status is None else ("write", status)


#: Node status fields a run of the agent writes only when a feature is on (the log
#: server, a dataplane): a report without them drops the last run's (now stale) values.
PER_RUN_STATUS: Final = ("logsEndpoint", "dataplane")
#: Node conditions the agent reports (its dataplane's view of the host firewall); the
#: others (``Ready``) belong to the nodes controller.
AGENT_CONDITIONS: Final = frozenset({"Firewall"})
#: Owned by the nodes controller once the Node exists (ready/down from the heartbeat).
LIVENESS: Final = ("state", "message")


def fold_node(node: Resource | None, name: str, report: dict[str, Any]
              ) -> tuple[Literal["create", "update", "done"], Resource | None]:
    """What a node's report does to its Node: create it (``spec`` written once: role,
    availability active), update its labels and agent-owned status, or nothing.

    Labels from the agent win for their keys; labels users added are kept. ``spec``
    belongs to users and controllers once the Node exists (``node update``, drain)."""
    status = dict(report.get("status") or {})
    labels = {str(k): str(v) for k, v in (report.get("labels") or {}).items()}
    if node is None:
        made = Resource("Node", ObjectMeta(name=name, labels=labels),
                        {"role": str(report.get("role") or "worker"),
                         "availability": "active"}, status)
        return "create", made
    mine = [c for c in status.pop("conditions", None) or []
            if isinstance(c, dict) and c.get("type") in AGENT_CONDITIONS]
    for field in LIVENESS:
        status.pop(field, None)
    new_status = {k: v for k, v in node.status.items()
                  if k not in PER_RUN_STATUS and k != "conditions"}
    new_status.update(status)
    kept = [c for c in node.status.get("conditions") or []
            if isinstance(c, dict) and c.get("type") not in AGENT_CONDITIONS]
    merged = kept + [_keep_transition(c, node) for c in mine]
    if merged:
        new_status["conditions"] = merged
    new_labels = {**node.metadata.labels, **labels}
    if new_status == node.status and new_labels == node.metadata.labels:
        return "done", None
    meta = node.metadata.copy()
    meta.labels = new_labels
    out = Resource(node.kind, meta, node.spec, new_status, node.apiVersion)
    return "update", out


def _keep_transition(cond: dict[str, Any], node: Resource) -> dict[str, Any]:
    """The reported condition, with the Node's ``lastTransitionTime`` when its status has
    not flipped (the time is when it last changed, not when it was last reported)."""
    for old in node.status.get("conditions") or []:
        if isinstance(old, dict) and old.get("type") == cond.get("type") and \
                old.get("status") == cond.get("status") and "lastTransitionTime" in old:
            return {**cond, "lastTransitionTime": old["lastTransitionTime"]}
    return cond
