"""Restart policy: when a task of a slot has ended, replace it now, later, or never.

Swarm's policy (``condition`` none | on-failure | any, ``delay``, ``maxAttempts``,
``window``) with one difference in where the bookkeeping lives. Swarm counts restarts in
the manager's memory, so a leader change forgets them and ``maxAttempts`` starts over.
Shoal writes the count onto the tasks themselves: a replacement carries the slot's restart
history in two annotations (``RESTART_COUNT``, ``RESTART_TIMES``), so any orchestrator
replica reaches the same decision from etcd alone, and the count survives task-history
trimming (``taskHistoryLimit`` may well be smaller than ``maxAttempts``).

The delay runs from the moment the old task ended (its ``status.timestamp``); until then
the ended task stays the slot's current task, which is what keeps a crash-looping slot
from spinning. All functions take the current time as an argument: no clock inside.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final

from shoal.controllers.taskspec import age_key
from shoal.crds import taskstates as ts
from shoal.crds import units
from shoal.crds.resource import Resource

RESTART_COUNT: Final = "shoal.io/restart-count"
RESTART_TIMES: Final = "shoal.io/restart-times"
#: Set (to the reason) on a task the policy gave up on, when it is shut down. It is what
#: tells "this slot is finished" apart from "this slot's task was stopped by Shoal" (a
#: drained node, a scale-down) on later passes, without any memory in the orchestrator.
NO_RESTART: Final = "shoal.io/no-restart"

ANY: Final = "any"
ON_FAILURE: Final = "on-failure"
NONE: Final = "none"
CONDITIONS: Final = (NONE, ON_FAILURE, ANY)


class Action(enum.Enum):
    NOW = "now"  # shut the ended task down and create its replacement in this pass
    LATER = "later"  # wait ``delay`` more seconds, then ask again
    NEVER = "never"  # the policy gives up on this slot (until the service changes)
    NOT_NEEDED = "not-needed"  # the slot's current task has not ended


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0  # seconds still to wait, for LATER
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RestartPolicy:
    """A service's ``spec.restartPolicy`` with Swarm's defaults filled in."""

    condition: str = ANY
    delay: float = 5.0
    max_attempts: int = 0  # 0 = unlimited
    window: float = 0.0  # 0 = count attempts forever

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> RestartPolicy:
        """Read ``restartPolicy``; a ValueError names the bad field."""
        spec = spec or {}
        condition = str(spec.get("condition") or ANY)
        if condition not in CONDITIONS:
            raise ValueError(f'invalid restartPolicy.condition "{condition}": expected one of '
                             f'{", ".join(CONDITIONS)}')
        try:
            attempts = int(spec.get("maxAttempts") or 0)
        except (TypeError, ValueError):
            raise ValueError(f"invalid restartPolicy.maxAttempts {spec.get('maxAttempts')!r}"
                             ) from None
        delay = spec.get("delay")
        window = spec.get("window")
        return cls(condition=condition,
                   delay=5.0 if delay in (None, "") else units.parse_duration(delay),
                   max_attempts=max(attempts, 0),
                   window=0.0 if window in (None, "") else units.parse_duration(window))


@dataclasses.dataclass(frozen=True, slots=True)
class Ledger:
    """A slot's restart history as carried by its current task."""

    count: int = 0  # restarts so far in the slot
    times: tuple[float, ...] = ()  # when the restarted tasks ended, oldest first (trimmed)

    @classmethod
    def of(cls, task: Resource) -> Ledger:
        notes = task.metadata.annotations
        try:
            count = int(notes.get(RESTART_COUNT) or 0)
        except ValueError:
            count = 0
        times: list[float] = []
        for word in str(notes.get(RESTART_TIMES) or "").split():
            try:
                times.append(float(word))
            except ValueError:
                continue
        return cls(count=max(count, 0), times=tuple(sorted(times)))

    def attempts(self, policy: RestartPolicy, now: float) -> int:
        """Restarts that count against ``maxAttempts`` at ``now``."""
        if policy.window > 0:
            start = now - policy.window
            return sum(1 for t in self.times if t > start)
        return self.count

    def after_restart(self, ended_at: float, policy: RestartPolicy) -> Ledger:
        """The ledger the replacement carries. Only the newest ``maxAttempts`` times are
        kept: that is all a windowed count can ever need, and it bounds the annotation."""
        keep = policy.max_attempts
        times = (*self.times, ended_at)[-keep:] if keep else ()
        return Ledger(count=self.count + 1, times=tuple(times))

    def annotations(self) -> dict[str, str]:
        out = {RESTART_COUNT: str(self.count)}
        if self.times:
            out[RESTART_TIMES] = " ".join(f"{t:.3f}".rstrip("0").rstrip(".") for t in self.times)
        return out


def decide(task: Resource, policy: RestartPolicy, now: float) -> Decision:
    """What to do about ``task``, the current task of its slot (desired running).

    NOT_NEEDED while it has not ended. NEVER when the condition rules a restart out
    (``none``; ``on-failure`` and it completed) or ``maxAttempts`` restarts already
    happened (within ``window`` when one is set). Otherwise LATER until ``delay`` has
    passed since it ended, then NOW. A task with no end timestamp, or one ahead of ``now``
    (a stepped clock, see ``taskstates.status_time_until``), is restarted now rather
    than waited on for as long as the clocks disagree.
    """
    state = ts.observed_state(task)
    if not ts.is_terminal(state):
        return Decision(Action.NOT_NEEDED)
    if policy.condition == NONE:
        return Decision(Action.NEVER, reason="restart policy condition is none")
    if policy.condition == ON_FAILURE and state == ts.COMPLETE:
        return Decision(Action.NEVER, reason="task completed (restart policy on-failure)")
    if policy.max_attempts:
        attempts = Ledger.of(task).attempts(policy, now)
        if attempts >= policy.max_attempts:
            within = (f" within {units.format_duration(policy.window)}"
                      if policy.window > 0 else "")
            return Decision(Action.NEVER, reason=(
                f"restart limit reached: {attempts} of {policy.max_attempts} "
                f"restarts{within}"))
    ended_at = ts.status_time_until(task, now)  # a stamp from the future: as if absent
    if ended_at is not None:
        remaining = policy.delay - (now - ended_at)
        if remaining > 0:
            return Decision(Action.LATER, delay=remaining,
                            reason=f"restart in {units.format_duration(round(remaining, 3))}")
    return Decision(Action.NOW, reason=f"task {state}, restarting")


def current_task(slot_tasks: Sequence[Resource]) -> Resource | None:
    """The slot's newest task still desired running, if any."""
    active = [t for t in slot_tasks if ts.is_active_desired(t)]
    return max(active, key=age_key) if active else None


def decide_slot(slot_tasks: Sequence[Resource], policy: RestartPolicy, now: float) -> Decision:
    """``decide`` for the current task of a slot (NOT_NEEDED if it has none)."""
    task = current_task(slot_tasks)
    return Decision(Action.NOT_NEEDED) if task is None else decide(task, policy, now)


def replacement_annotations(task: Resource, policy: RestartPolicy, now: float,
                            counted: bool = True, generation: int | None = None
                            ) -> dict[str, str]:
    """Annotations for the task replacing ``task``. ``counted=False`` for a move (its node
    went down or was drained): that is not the task's fault, so the history is carried
    over unchanged. When the replacement runs a newer service ``generation`` than
    ``task``, the history starts over, as Swarm resets it on a new spec version: a fixed
    image deserves its own attempts."""
    ledger = Ledger.of(task)
    if generation is not None and ts.generation_of(task) != generation:
        ledger = Ledger()
    if counted:
        ledger = ledger.after_restart(ts.status_time(task) or now, policy)
    return ledger.annotations() if ledger.count else {}
