"""Moves: what rebalancing asks of one updater pass over a service.

``rebalance.py`` decides from plain slots and candidate nodes; this module reads those
from the service, its tasks and the nodes, decides whether rebalancing may act at all
in this pass, and says what ``status.rebalance`` should read. Pure: no I/O, the time an
argument. The updater feeds ``Pass.slots`` into its batches as ``MOVE`` slots (always
start-first), marks their replacements ``shoal.io/moved-from`` (``MOVED_FROM``) and
writes ``Pass.status``.

Rebalancing acts when the service asks for it (``spec.placement.rebalance.enabled``) or
a request is pending (``shoal.io/rebalance-request`` not yet in
``status.rebalance.handled``), and only when no update is in flight: no task runs an
out-of-date spec, the last rollout (if any) finished, the service is not paused. A
request is handled once the service is steady and the decision has no move left.

Everything is derived from etcd — the request, the moved tasks and their creation times
— so an updater killed at any point resumes the same rebalance: the count of moves is
the number of moved replacements made since the request (or, without one, still in the
tasks' history), not a counter that a crash could lose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from shoal.controllers import nodefacts
from shoal.controllers.updater import rebalance as rb
from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource

#: ``status.update`` states after which the service is steady as far as rollouts go.
SETTLED_STATES: Final = frozenset({None, "completed", "rollback_completed"})


@dataclasses.dataclass(frozen=True, slots=True)
class Pass:
    """Slots to move now (slot -> the node it leaves), whether rebalancing is on for
    this service at all (the updater wakes such services on node changes), the
    ``status.rebalance`` to write (None: leave it as it is), when to look again, and
    the problems reading the spec."""

    slots: dict[int, str]
    active: bool
    status: dict[str, Any] | None
    requeue_after: float | None = None
    problems: tuple[str, ...] = ()


def pending_request(service: Resource) -> str | None:
    """The rebalance request not yet handled, if any."""
    request = service.metadata.annotations.get(rb.REQUEST)
    handled = _status(service).get("handled")
    return request if request and request != handled else None


def _status(service: Resource) -> dict[str, Any]:
    value = service.status.get("rebalance")
    return value if isinstance(value, dict) else {}


def live_slots(tasks: Iterable[Resource]) -> list[rb.Slot]:
    """The service's slots that hold a task desired running: a slot runs when its one
    such task runs (two of them are a replacement in flight)."""
    by_slot: dict[int, list[Resource]] = {}
    for task in tasks:
        slot = ts.slot_of(task)
        if slot > 0 and ts.is_active_desired(task):
            by_slot.setdefault(slot, []).append(task)
    out = []
    for slot, same in sorted(by_slot.items()):
        newest = max(same, key=lambda t: (ts.creation_time(t), t.metadata.name))
        out.append(rb.Slot(slot, ts.node_name_of(newest),
                           len(same) == 1 and ts.is_running(newest)))
    return out


def plan(service: Resource, tasks: Sequence[Resource], nodes: Iterable[Resource], now: float,
         dirty: Callable[[Resource], bool]) -> Pass:
    """Rebalancing's part of one updater pass over a replicated ``service``.

    ``tasks``: all of the service's tasks. ``dirty``: the updater's dirty rule
    (``taskspec.Wanted.dirty``).
    """
    placement = service.spec.get("placement")
    config, problems = rb.Config.from_spec(placement)
    request = pending_request(service)
    mode = service.spec.get("mode") or "replicated"
    if mode != "replicated" or not (config.enabled or request):
        return Pass({}, False, None, problems=tuple(problems))
    previous = _status(service)
    update = service.status.get("update")
    state = update.get("state") if isinstance(update, dict) else None
    live = [t for t in tasks if ts.is_active_desired(t)]
    if (service.spec.get("paused") is True or state not in SETTLED_STATES
            or any(dirty(t) for t in live)):
        return Pass({}, True, _with(previous, message="waiting for the update to finish"),
                    problems=tuple(problems))
    candidates, unreadable = rb.candidates(placement, nodes)
    problems += unreadable
    replicas = service.spec.get("replicas", 1)
    decision = rb.decide(
        live_slots(tasks), replicas if type(replicas) is int else -1, candidates, now,
        config, rb.recent_moves(tasks, now), rb.max_per_node(placement),
        nodefacts.spread_turn(service.metadata.namespace or resource.DEFAULT_NAMESPACE,
                              service.metadata.name))
    moved = [t for t in tasks if rb.MOVED_FROM in t.metadata.annotations]
    since = ts.parse_timestamp(service.metadata.annotations.get(rb.REQUEST))
    counted = [t for t in moved if since is None or ts.creation_time(t) >= since]
    # Counted from the replacements that exist, so a move shows once it is written
    # (and a batch cut short by updateConfig.parallelism counts what it made).
    fields: dict[str, Any] = {"moves": len(counted), "message": decision.waiting}
    if counted:
        fields["lastMoveAt"] = max(t.metadata.creationTimestamp or "" for t in counted)
    if request is not None and decision.settled:
        fields["handled"] = request
    return Pass({m.slot: m.source for m in decision.moves}, True, _with(previous, **fields),
                decision.requeue_after, tuple(problems))


def _with(previous: dict[str, Any], **fields: Any) -> dict[str, Any] | None:
    """``previous`` with ``fields`` (None when that changes nothing: no write)."""
    merged = {**previous, **fields}
    if not merged.get("message"):
        merged.pop("message", None)
    return None if merged == previous else merged
