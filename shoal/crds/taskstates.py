"""Task states: their order, which moves are legal, and small readers for task fields.

Every controller and the agent reason about task progress; keeping the order, the
forward-only rule and the field readers in one place means they all agree on what
"running", "finished" or "holds resources" means. Swarm's task states, in Swarm's order.
"""

from __future__ import annotations

import datetime
import re
import sys
from typing import Any, Final, NamedTuple

from shoal.crds.resource import DEFAULT_NAMESPACE, Resource

NEW: Final = "new"
PENDING: Final = "pending"
ASSIGNED: Final = "assigned"
ACCEPTED: Final = "accepted"
PREPARING: Final = "preparing"
STARTING: Final = "starting"
RUNNING: Final = "running"
COMPLETE: Final = "complete"
FAILED: Final = "failed"
SHUTDOWN: Final = "shutdown"
REJECTED: Final = "rejected"
ORPHANED: Final = "orphaned"

#: Every state, in the only order a task may move through them.
STATES: Final[tuple[str, ...]] = (NEW, PENDING, ASSIGNED, ACCEPTED, PREPARING, STARTING,
                                  RUNNING, COMPLETE, FAILED, SHUTDOWN, REJECTED, ORPHANED)
RANK: Final[dict[str, int]] = {state: i for i, state in enumerate(STATES)}
RUNNING_RANK: Final = RANK[RUNNING]
TERMINAL: Final[frozenset[str]] = frozenset(STATES[RUNNING_RANK + 1:])
#: Terminal states a task reaches on its own (its process ended or could not start), as
#: opposed to being stopped by Shoal (shutdown) or lost with its node (orphaned). Only
#: these count against a restart policy or make a node look bad for a service.
SELF_ENDED: Final[frozenset[str]] = frozenset({COMPLETE, FAILED, REJECTED})

#: The label that ties a task to its service (Task ``spec.serviceName`` says the same).
SERVICE_LABEL: Final = "shoal.io/service"


def rank(state: str) -> int:
    """Position of ``state`` in ``STATES``; a ValueError names the valid states."""
    try:
        return RANK[state]
    except KeyError:
        raise ValueError(f'unknown task state "{state}": expected one of '
                         f'{", ".join(STATES)}') from None


def is_terminal(state: str) -> bool:
    """True for states a task never leaves (complete, failed, shutdown, rejected, orphaned)."""
    return rank(state) > RUNNING_RANK


def can_transition(old: str, new: str) -> bool:
    """Whether a task may move from ``old`` to ``new``: strictly forward, never out of an end.

    Both the agent (observed state) and the controllers (desired state) use this before a
    compare-and-swap write, so a late or replayed event can never move a task backwards.
    """
    return rank(new) > rank(old) and not is_terminal(old)


def observed_state(task: Resource) -> str:
    """``status.state``; a task nobody has reported on yet is ``new``."""
    state = task.status.get("state") or NEW
    return state if state in RANK else NEW


#: What swctl shows, instead of the last reported state, for a task whose node is down:
#: its agent cannot say, so "running" would be a guess. Never stored as ``status.state``
#: (states only move forward); it is read from the ``NodeReachable`` condition.
UNKNOWN: Final = "unknown"
#: The Task condition the nodes controller sets False while the task's node is down.
NODE_REACHABLE: Final = "NodeReachable"


def node_unreachable(task: Resource) -> bool:
    """The task's node is down, so its last reported (live) state may no longer hold."""
    for cond in task.status.get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == NODE_REACHABLE:
            return cond.get("status") == "False" and is_live(task)
    return False


def shown_state(task: Resource) -> str:
    """The state to show a user: ``unknown`` while the task's node is down and the task
    had not ended, else the observed state."""
    return UNKNOWN if node_unreachable(task) else observed_state(task)


def desired_state(task: Resource) -> str:
    """``spec.desiredState``; the schema default is ``running``."""
    state = task.spec.get("desiredState") or RUNNING
    return state if state in RANK else RUNNING


def is_active_desired(task: Resource) -> bool:
    """The controllers still want this task to run (desired state at or before running)."""
    return RANK.get(task.spec.get("desiredState") or RUNNING, RUNNING_RANK) <= RUNNING_RANK


def is_live(task: Resource) -> bool:
    """Observed at or before running: the task may still hold its node's resources."""
    return RANK.get(task.status.get("state") or NEW, 0) <= RUNNING_RANK


def is_running(task: Resource) -> bool:
    return task.status.get("state") == RUNNING


def has_ended(task: Resource) -> bool:
    """Observed in a terminal state."""
    return RANK.get(task.status.get("state") or NEW, 0) > RUNNING_RANK


def ended_by_itself(task: Resource) -> bool:
    """Observed complete, failed or rejected (see ``SELF_ENDED``)."""
    return task.status.get("state") in SELF_ENDED


def service_name(task: Resource) -> str | None:
    """The owning service's name: the ``shoal.io/service`` label, else ``spec.serviceName``."""
    name = task.metadata.labels.get(SERVICE_LABEL) or task.spec.get("serviceName")
    return str(name) if name else None


def namespace_of(obj: Resource) -> str:
    return obj.metadata.namespace or DEFAULT_NAMESPACE


def task_key(task: Resource) -> str:
    """``namespace/name``: unique across stacks, the key scheduler results are reported by."""
    return f"{namespace_of(task)}/{task.metadata.name}"


def slot_of(task: Resource) -> int:
    """``spec.slot``; 0 (global tasks) when absent or unreadable."""
    try:
        return int(task.spec.get("slot") or 0)
    except (TypeError, ValueError):
        return 0


def generation_of(task: Resource) -> int:
    try:
        return int(task.spec.get("serviceGeneration") or 0)
    except (TypeError, ValueError):
        return 0


def node_name_of(task: Resource) -> str | None:
    name = task.spec.get("nodeName")
    return str(name) if name else None


_NUMERIC_RE = re.compile(r"^\s*\d+(\.\d*)?\s*$")


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from an RFC 3339 string (``2024-05-01T10:00:00Z``) or a number.

    Returns None for missing or unreadable values instead of raising: timestamps are
    written by agents and a bad one must degrade a decision, not crash a controller.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    if _NUMERIC_RE.match(value):
        return float(value)
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # Shoal writes UTC; a naive stamp is read as UTC, not local
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def status_time(task: Resource) -> float | None:
    """When the task last changed observed state (``status.timestamp``)."""
    return parse_timestamp(task.status.get("timestamp"))


#: How far ahead of the reader's clock a task's stamp may be and still be believed:
#: stamps are whole seconds, truncated, so a sane one is never ahead; this is room for
#: the small skew between hosts that NTP leaves.
CLOCK_SLACK = 2.0


def status_time_until(task: Resource, now: float) -> float | None:
    """``status_time``, or None when it is more than ``CLOCK_SLACK`` after ``now``.

    Such a stamp was written by a clock ahead of the reader's (an agent's stepped
    forward, or the reader's stepped back), and keeps that lead in etcd after the clocks
    agree again. A wait computed from it (a restart delay, an update's monitor window)
    would last as long as the clocks disagreed by — hours after an NTP step — so it tells
    nothing about when, and callers treat it as they treat a missing stamp."""
    stamp = status_time(task)
    return None if stamp is None or stamp > now + CLOCK_SLACK else stamp


def creation_time(task: Resource) -> float:
    return parse_timestamp(task.metadata.creationTimestamp) or 0.0


class TaskFacts(NamedTuple):
    """What planning asks of a task, read once when the task enters a cache.

    A node going down re-plans every service with a task there, each over all of its
    tasks; reading these from the tasks themselves touches four objects per task,
    scattered over a heap of 100,000 tasks (bench/plan.py: 3.4-3.7 ms a 1,000-task
    service against 0.7-0.8 ms from the facts). Strings are interned so comparing them
    touches nothing more.
    """

    slot: int  # slot_of
    node: str | None  # node_name_of
    active: bool  # is_active_desired
    ended: bool  # has_ended
    owner: str | None  # uid of the owning Service in ownerReferences, if any
    task: Resource
    generation: int = 0  # generation_of: a task of the service's own generation is clean


def facts_of(task: Resource) -> TaskFacts:
    node = node_name_of(task)
    owner = None
    for ref in task.metadata.ownerReferences:
        if ref.get("kind") == "Service" and ref.get("uid"):
            owner = sys.intern(str(ref["uid"]))
            break
    return TaskFacts(slot_of(task), None if node is None else sys.intern(node),
                     is_active_desired(task), has_ended(task), owner, task,
                     generation_of(task))


def merge_status(status: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any] | None:
    """``status`` with a node's report ``fields`` applied, or None when there is nothing
    (allowed) to write: the one rule for the agent writing its reports and the fold
    controller copying them into Task.status.

    Never moves the state backwards or out of an end state; the same state with new
    details (an exit code seen later) is written, keeping its original timestamp.
    """
    old, new = status.get("state"), fields.get("state")
    if not isinstance(new, str) or new not in RANK:
        return None
    old_rank = RANK.get(old, 0) if isinstance(old, str) else 0
    new_rank = RANK[new]
    if new_rank < old_rank or (old_rank > RUNNING_RANK and new != old):
        return None
    if new == old:
        if all(status.get(k) == v for k, v in fields.items() if k != "timestamp"):
            return None
        fields = {k: v for k, v in fields.items() if k != "timestamp"}
    out = dict(status)
    out.update(fields)
    return out

