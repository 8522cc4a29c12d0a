"""Batches: which slots to replace in this pass, and what to tell the user.

What it owns: the pure per-pass decision of a rollout — Swarm's update semantics fed a
service's ``UpdateConfig`` (``config.py``) — and the status a user reads
(``status.update``, like ``docker service inspect``'s UpdateStatus). The controller
builds the slot views from the task cache and writes what comes out. No I/O, no clock:
the time is an argument. Everything is derived from the tasks, so an updater that is
killed and restarted resumes where it stopped:

* a slot is replaced for a reason: ``DIRTY`` (its task runs an out-of-date spec, by the
  service's update order) or ``MOVE`` (a clean task to move elsewhere, always
  start-first: the seam rebalancing feeds later). Dirty slots go first, lowest slot (or
  node name) first;
* in flight: slots whose current task runs the current spec but is not running yet, or
  whose older task still runs beside it (a start-first overlap the orchestrator has not
  ended yet); ``parallelism`` bounds them (0: no bound), and only the rest of the budget
  is spent. "Running" is the agents' word, and an agent reports a task with a health
  check running only once it is healthy (Swarm's rule), so a batch counts as updated
  only when its tasks are healthy. Either way at most ``parallelism`` slots are in
  flight, so stop-first never has fewer than replicas - parallelism tasks desired
  running and start-first never more than replicas + parallelism;
* ``delay``: the next batch waits until the newest updated task has run that long
  (measured from its running report, rounded up to the stamp's next second);
* failures (``failures``): tasks of the service's current generation that were
  rejected, or failed within ``monitor`` of being created, and ended after the user's
  last resume (``shoal.io/resumed-at``). More than ``maxFailureRatio`` of the slots
  pauses the rollout (``pause``), goes on (``continue``), or asks for a rollback
  (``rollback``; a rollback generation never rolls back itself, it pauses);
* ``spec.paused``: no slot is replaced; tasks in flight finish.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from shoal.controllers import taskspec
from shoal.controllers.updater.config import SWARM_DEFAULTS, UpdateConfig
from shoal.crds import taskstates as ts
from shoal.crds import updatemeta as um
from shoal.crds.resource import Resource

# The states are the contract's words (crds/updatemeta.py), which swctl reads too.
UPDATING: Final = um.UPDATING
PAUSED: Final = um.PAUSED
COMPLETED: Final = um.COMPLETED
ROLLBACK_STARTED: Final = um.ROLLBACK_STARTED
ROLLBACK_PAUSED: Final = um.ROLLBACK_PAUSED
ROLLBACK_COMPLETED: Final = um.ROLLBACK_COMPLETED
State = Literal["updating", "paused", "completed", "rollback_started", "rollback_paused",
                "rollback_completed"]
#: States of a rollout still under way (a task change may move it on).
UNDER_WAY: Final = frozenset({UPDATING, PAUSED, ROLLBACK_STARTED, ROLLBACK_PAUSED})

DIRTY: Final = "dirty"
MOVE: Final = "move"
Reason = Literal["dirty", "move"]

#: Task status timestamps have whole seconds (``resource.now_rfc3339``).
STAMP_RESOLUTION: Final = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class SlotView:
    """One live slot as the rollout sees it: its current task (the newest generation
    desired running), older tasks still desired running beside it (a start-first
    overlap), and why it should be replaced (None: it should not)."""

    key: int | str
    current: Resource
    reason: Reason | None = None
    others: tuple[Resource, ...] = ()
    tasks: tuple[Resource, ...] = ()  # every task of the slot, history included

    @property
    def dirty(self) -> bool:
        return self.reason == DIRTY


@dataclasses.dataclass(frozen=True, slots=True)
class Replacement:
    """Replace ``key``'s current task, ``order`` stop-first or start-first."""

    key: int | str
    order: Literal["stop-first", "start-first"]
    reason: Reason


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The pass: slots to replace now, what to tell the user, and whether the failure
    action asks for a rollback (``rollback_after``: the failure that made it)."""

    replace: list[Replacement]
    state: State
    message: str
    updated: int
    total: int
    requeue_after: float | None = None
    rollback_after: str | None = None

    def status(self) -> dict[str, Any]:
        """The decision's part of ``status.update``."""
        return {"state": self.state, "message": self.message,
                "updatedTasks": self.updated, "totalTasks": self.total}


def views(tasks: Iterable[Resource], wanted: taskspec.Wanted, global_mode: bool,
          moves: Iterable[int | str] = ()) -> list[SlotView]:
    """The live slots of a service from all its tasks: keyed by slot number (by node
    name for global services); a slot without a task desired running is the
    orchestrator's to refill and left out. ``moves``: clean slots to move (rebalancing)."""
    by_key: dict[int | str, list[Resource]] = {}
    for task in tasks:
        key: int | str | None
        if global_mode:
            key = ts.node_name_of(task) if ts.slot_of(task) <= 0 else None
        else:
            slot = ts.slot_of(task)
            key = slot if slot > 0 else None
        if key is not None:
            by_key.setdefault(key, []).append(task)
    to_move = set(moves)
    out: list[SlotView] = []
    for key, same in by_key.items():
        active = [t for t in same if ts.is_active_desired(t)]
        if not active:
            continue
        active.sort(key=lambda t: (ts.generation_of(t), taskspec.age_key(t)))
        current = active[-1]
        reason: Reason | None = None
        if wanted.dirty(current):
            reason = DIRTY
        elif key in to_move:
            reason = MOVE
        out.append(SlotView(key, current, reason, tuple(active[:-1]), tuple(same)))
    return sorted(out, key=_order)


def ready_to_start(view: SlotView, ready_nodes: Container[str]) -> bool:
    """Whether a stop-first replacement may start now.

    A stop-first replacement is created desired ``preparing`` (Swarm's ``ready``): its
    agent pulls and prepares it but does not start it until every older task of its
    slot has stopped, as Swarm's stop-first does, so a slot never runs old and new at
    once (a host port, a volume, a licence held by one process at a time). It may
    start once each older task has ended, never reached a node, or sits on a node that
    is not ready (its agent will not report again; the nodes controller deals with it).
    """
    current = view.current
    if ts.desired_state(current) != ts.PREPARING or view.others:
        return False
    name = current.metadata.name
    for task in view.tasks:
        if task.metadata.name == name or ts.has_ended(task):
            continue
        node = ts.node_name_of(task)
        if node is not None and node in ready_nodes:
            return False
    return True


def failures(tasks: Iterable[Resource], generation: int, monitor: float | None = None,
             resumed_at: float | None = None) -> list[Resource]:
    """Tasks of ``generation`` that count as failures of its rollout, oldest first:
    rejected ones, and failed ones — with ``monitor``, only those that failed within
    that long of being created (a task that ran well and died later is the restart
    policy's business, not the update's). With ``resumed_at``, only those that ended
    after it (the user resumed past the earlier ones)."""
    out = []
    for t in tasks:
        if ts.generation_of(t) != generation:
            continue
        state = ts.observed_state(t)
        ended = ts.status_time(t)
        if resumed_at is not None and ended is not None and ended < resumed_at:
            continue
        if state == ts.REJECTED:
            out.append(t)
        elif state == ts.FAILED:
            if monitor is None or ended is None or ended - ts.creation_time(t) <= monitor:
                out.append(t)
    return sorted(out, key=lambda t: (ts.status_time(t) or 0.0, t.metadata.name))


def describe_failure(task: Resource) -> str:
    """``task web.3.2 failed on node n2: exit code 1``."""
    where = f" on node {ts.node_name_of(task)}" if ts.node_name_of(task) else ""
    err = str(task.status.get("err") or task.status.get("message") or "no error reported")
    return f"task {task.metadata.name} {ts.observed_state(task)}{where}: {err}"


def decide(slots: Sequence[SlotView], failed: Sequence[Resource], now: float,
           config: UpdateConfig = SWARM_DEFAULTS,
           previous: Mapping[str, Any] | None = None, *, rollback: bool = False,
           paused: bool = False, service: str = "",
           rollback_message: str = "rollback started",
           generation: int | None = None) -> Decision | None:
    """Which slots to replace in this pass.

    ``slots``: the live slots (``views``). ``failed``: the current generation's failures
    (``failures``). ``previous``: the service's ``status.update`` as stored.
    ``rollback``: the current generation is a rollback (states ``rollback_*``).
    ``paused``: ``spec.paused``. ``generation``: the service's; with it, a rollout
    whose every slot is updated stays under way until the newest of its tasks has run
    for ``config.monitor`` (Swarm waits the monitor period out before it calls an
    update completed: a task of the last batch that fails within it still counts).
    None when there is nothing to report: nothing to replace and no rollout was under
    way.
    """
    dirty = [s for s in slots if s.reason == DIRTY]
    moves = [s for s in slots if s.reason == MOVE]
    total = len(slots)
    updated = total - len(dirty)
    was = (previous or {}).get("state")
    if not dirty and not moves and was not in UNDER_WAY:
        return None
    what = "rollback" if rollback else "update"
    if config.pauses_after(len(failed), total):
        cause = describe_failure(failed[-1])
        if config.failure_action == "rollback" and not rollback:
            return Decision([], ROLLBACK_STARTED, f"rollback started: update rolled back due "
                            f"to failure of {cause}", updated, total, rollback_after=cause)
        return Decision([], ROLLBACK_PAUSED if rollback else PAUSED,
                        f"{what} paused due to failure of {cause}", updated, total)
    fresh = [s for s in slots if s.reason is None]
    starting = [s for s in fresh if s.others or (
        not ts.has_ended(s.current) and not ts.is_running(s.current))]
    in_progress = rollback_message if rollback else "update in progress"
    if not dirty and not moves:
        if starting:
            return Decision([], ROLLBACK_STARTED if rollback else UPDATING,
                            f"{in_progress}: {updated} out of {total} tasks updated, the "
                            "last starting", updated, total)
        watch = _monitor_left(fresh, generation, config.monitor, now)
        if watch > 0:
            return Decision([], ROLLBACK_STARTED if rollback else UPDATING,
                            f"{in_progress}: {updated} out of {total} tasks updated, "
                            f"monitoring the last for {watch:.0f}s", updated, total,
                            requeue_after=watch)
        return Decision([], ROLLBACK_COMPLETED if rollback else COMPLETED,
                        f"{what} completed", updated, total)
    if paused:
        return Decision([], ROLLBACK_PAUSED if rollback else PAUSED,
                        f"{what} paused by user (swctl rollout resume service/{service} "
                        "continues it)", updated, total)
    todo = dirty + moves
    budget = len(todo) if config.parallelism <= 0 else config.parallelism - len(starting)
    requeue: float | None = None
    if budget > 0 and config.delay > 0:
        # The delay runs from the newest up-to-date task's start (its running report).
        # Agents stamp whole seconds, truncated: the report came up to a second after
        # its stamp, so the stamp's next second is when the delay surely began — a batch
        # may wait up to a second longer than asked, never less.
        # A stamp ahead of this clock (ts.status_time_until) is not waited on.
        since = max((t + STAMP_RESOLUTION
                     for t in (ts.status_time_until(s.current, now) for s in fresh
                               if ts.is_running(s.current))
                     if t is not None), default=None)
        if since is not None and now - since < config.delay:
            requeue = config.delay - (now - since)
            budget = 0
    chosen = [Replacement(s.key, config.order if s.reason == DIRTY else "start-first",
                          DIRTY if s.reason == DIRTY else MOVE)
              for s in todo[:max(budget, 0)]]
    message = f"{in_progress}: {updated} out of {total} tasks updated"
    return Decision(chosen, ROLLBACK_STARTED if rollback else UPDATING, message, updated,
                    total, requeue)


def _monitor_left(fresh: Sequence[SlotView], generation: int | None, monitor: float,
                  now: float) -> float:
    """Seconds until the newest running task of ``generation`` has run ``monitor``
    (from its running report, the stamp's next second as for ``delay``); 0 when none
    is that new, or without a generation. A running report stamped ahead of ``now``
    (an agent's clock stepped forward) is not monitored: waiting for it would hold the
    update for as long as the clocks disagreed by."""
    if generation is None or monitor <= 0:
        return 0.0
    started = [t for t in (ts.status_time_until(s.current, now) for s in fresh
                           if ts.generation_of(s.current) == generation
                           and ts.is_running(s.current)) if t is not None]
    if not started:
        return 0.0
    return max(max(started) + STAMP_RESOLUTION + monitor - now, 0.0)


def progressing(state: str, message: str, automatic: bool) -> tuple[bool, str]:
    """The ``Progressing`` condition's (status, reason) for an update state;
    ``automatic``: the rollback was the failure action's, not asked for."""
    if state in (UPDATING, ROLLBACK_STARTED):
        return True, "Updating"
    if state == COMPLETED:
        return True, "Completed"
    if state == ROLLBACK_COMPLETED:
        return (False, "RolledBack") if automatic else (True, "RollbackCompleted")
    if state == ROLLBACK_PAUSED:
        return False, "RollbackPaused"
    return False, "UpdatePaused"


def _order(slot: SlotView) -> tuple[int, int, str]:
    return (0, slot.key, "") if isinstance(slot.key, int) else (1, 0, slot.key)
