"""Rollout: which tasks run an out-of-date spec, and how many of them to replace now.

What it owns: the rule that makes a task *dirty* — what it runs differs from what its
service asks for now — and the pure decision of which dirty slots to replace in this
pass, with the status a user reads (``status.update``, like ``docker service inspect``'s
UpdateStatus). ``slots.py`` asks it; the orchestrator loop writes what comes out. No I/O,
no clock: the time is an argument.

Dirty, as swarmkit's ``IsTaskDirty``: every new task records the parts of the service
that shape it (``RECORDED``: the template, placement, networks, endpoint and
``forceUpdate``); a task is dirty when one of its copies differs from the service's.
``placement.rebalance`` says how tasks are looked after, not what one runs: it is not
recorded, so turning rebalancing on restarts nothing. A
replicas-only change bumps the service's generation but changes no copy, so it replaces
nothing. Tasks recorded before a section was copied compare that section as empty.

The decision follows Swarm's update semantics, fed the service's ``spec.updateConfig``
(``UpdateConfig.from_spec``; Swarm's defaults fill what is unset or unreadable).
Everything is derived from the tasks, so a controller that is killed and restarted
resumes where it stopped:

* in flight: slots whose current task runs the current spec but is not running yet;
  ``parallelism`` bounds them (0: no bound), and only the rest of the budget is spent on
  dirty slots, lowest slot (or node name) first. "Running" is the agents' word, and an
  agent reports a task with a health check running only once it is healthy (Swarm's
  rule), so a batch counts as updated only when its tasks are healthy;
* ``order``: stop-first stops a slot's old task in the pass that creates its
  replacement; start-first creates the replacement alone and the old task is told to
  stop only once the replacement runs (``slots._view``). Either way at most
  ``parallelism`` slots are in flight, so stop-first never has fewer than
  replicas - parallelism tasks desired running and start-first never more than
  replicas + parallelism;
* ``delay``: the next batch waits until the newest updated task has run that long
  (measured from its running report, rounded up to the stamp's next second);
* failures: tasks of the service's current generation that were rejected, or failed
  within ``monitor`` of being created (the agents do not record when a task started
  running, so the window opens when the orchestrator made the task: the safe side for a
  task that fails as it starts). More than ``maxFailureRatio`` of the slots (default
  0: any) pauses the rollout with the reason; ``continue`` goes on past them;
  ``rollback`` pauses too, saying so, until rollback is built (issue #13).
  A paused rollout resumes when the service changes again (a new generation: fix the
  image, or bump ``forceUpdate``), as ``docker service update`` resumes Swarm's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from shoal.crds import taskstates as ts
from shoal.crds import units
from shoal.crds.resource import Resource

UPDATING: Final = "updating"
PAUSED: Final = "paused"
COMPLETED: Final = "completed"
State = Literal["updating", "paused", "completed"]

#: Service spec sections a task records (under the same name in ``Task.spec``; the
#: networks under ``requestedNetworks``, since ``spec.networks`` holds the allocator's
#: attachments). The scheduler already prefers a task's own placement and endpoint.
RECORDED: Final = ("template", "placement", "endpoint", "forceUpdate")
NETWORKS_FIELD: Final = "requestedNetworks"


ORDERS: Final = ("stop-first", "start-first")
#: Task status timestamps have whole seconds (``resource.now_rfc3339``).
STAMP_RESOLUTION: Final = 1.0
FAILURE_ACTIONS: Final = ("pause", "continue", "rollback")


@dataclasses.dataclass(frozen=True, slots=True)
class UpdateConfig:
    """How a rollout proceeds: Swarm's ``UpdateConfig`` with its defaults."""

    parallelism: int = 1  # tasks replaced at once; 0 = all at once
    delay: float = 0.0  # seconds between batches
    order: Literal["stop-first", "start-first"] = "stop-first"
    failure_action: Literal["pause", "continue", "rollback"] = "pause"
    monitor: float = 5.0
    max_failure_ratio: float = 0.0

    def pauses_after(self, failures: int, total: int) -> bool:
        """Whether ``failures`` failed new tasks out of ``total`` slots stop the update
        (failure action pause or rollback, past maxFailureRatio). The orchestrator
        decides with it, and ``swctl``'s wait reads the same rule."""
        return (self.failure_action != "continue" and failures > 0
                and failures > self.max_failure_ratio * max(total, 1))

    @classmethod
    def from_spec(cls, value: Any) -> tuple[UpdateConfig, list[str]]:
        """``spec.updateConfig`` read leniently: a field that cannot be read keeps
        Swarm's default and is named in the problems (the API server validates
        manifests; this guards against whatever reached etcd some other way, which must
        not stop the service's rollout or crash the loop)."""
        spec = value if isinstance(value, dict) else {}
        problems: list[str] = []
        base = cls()
        fields: dict[str, Any] = {}

        def bad(name: str, why: str) -> None:
            problems.append(f"spec.updateConfig.{name} {spec.get(name)!r}: {why}; "
                            f"using the default")

        par = spec.get("parallelism")
        if par is not None:
            if type(par) is int and par >= 0:
                fields["parallelism"] = par
            else:
                bad("parallelism", "must be an integer >= 0 (0 = all at once)")
        for name, attr in (("delay", "delay"), ("monitor", "monitor")):
            if spec.get(name) is not None:
                try:
                    fields[attr] = units.parse_duration(spec[name])
                except ValueError as exc:
                    bad(name, str(exc))
        if spec.get("order") is not None:
            if spec["order"] in ORDERS:
                fields["order"] = spec["order"]
            else:
                bad("order", "must be stop-first or start-first")
        if spec.get("failureAction") is not None:
            if spec["failureAction"] in FAILURE_ACTIONS:
                fields["failure_action"] = spec["failureAction"]
            else:
                bad("failureAction", "must be pause, continue or rollback")
        ratio = spec.get("maxFailureRatio")
        if ratio is not None:
            if isinstance(ratio, int | float) and not isinstance(ratio, bool) and (
                    0 <= ratio <= 1):
                fields["max_failure_ratio"] = float(ratio)
            else:
                bad("maxFailureRatio", "must be a number from 0 to 1")
        return dataclasses.replace(base, **fields), problems


#: Swarm's defaults: what a service without ``updateConfig`` gets.
SWARM_DEFAULTS: Final = UpdateConfig()


def _networks(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _endpoint(value: Any) -> tuple[str, list[Any]]:
    """An endpoint with the defaults an absent one means: vip, no ports."""
    ep = value if isinstance(value, dict) else {}
    return (str(ep.get("mode") or "vip"), list(ep.get("ports") or []))


#: Placement fields that say how the service's tasks are looked after, not what shapes
#: one: not recorded by tasks, so changing them makes no task dirty.
UNRECORDED_PLACEMENT: Final = ("rebalance",)


def _placement(value: Any) -> Any:
    """``spec.placement`` as a task records it (without ``UNRECORDED_PLACEMENT``)."""
    if isinstance(value, dict) and any(k in value for k in UNRECORDED_PLACEMENT):
        return {k: v for k, v in value.items() if k not in UNRECORDED_PLACEMENT}
    return value


def _normal(section: str, value: Any) -> Any:
    """A recorded section in the form that compares: absent and empty are the same."""
    if section == "endpoint":
        return _endpoint(value)
    if section == "placement":
        return _placement(value) or {}
    if section == "forceUpdate":
        return value or 0
    if section == NETWORKS_FIELD:
        return _networks(value)
    return value or {}


def task_copy(service: Resource) -> dict[str, Any]:
    """What a new task of ``service`` records (merged into its ``spec``). Shared, not
    copied: the store only serialises them. Empty sections are left out."""
    spec = service.spec
    out: dict[str, Any] = {"template": spec.get("template") or {}}
    for section in RECORDED[1:]:
        value = _placement(spec.get(section)) if section == "placement" else spec.get(section)
        if value:
            out[section] = value
    if spec.get("networks"):
        out[NETWORKS_FIELD] = spec["networks"]
    return out


class Wanted:
    """The service's sections as tasks must record them to be clean.

    Built once per pass. Tasks of one service generation were all made from the same
    spec, so the verdict is remembered per generation of the task: a 1,000-task service
    after a replicas-only change compares once, not 1,000 times."""

    def __init__(self, service: Resource) -> None:
        spec = service.spec
        self.generation = service.metadata.generation
        self._sections = {s: _normal(s, spec.get(s)) for s in RECORDED}
        self._sections[NETWORKS_FIELD] = _networks(spec.get("networks"))
        self._verdicts: dict[int, bool] = {}

    def dirty(self, task: Resource, generation: int | None = None) -> bool:
        """Does ``task`` run something other than the service's current spec?
        ``generation``: the task's, when the caller has it (the index's facts) — then a
        generation already judged is answered without touching the task."""
        gen = task.spec.get("serviceGeneration") if generation is None else generation
        if gen == self.generation:
            return False  # made from this very spec
        if type(gen) is int:
            verdict = self._verdicts.get(gen)
            if verdict is None:
                verdict = self._verdicts[gen] = self._differs(task)
            return verdict
        return self._differs(task)

    def _differs(self, task: Resource) -> bool:
        spec = task.spec
        return any(_normal(s, spec.get(s)) != want for s, want in self._sections.items())


def is_dirty(task: Resource, service: Resource) -> bool:
    """One task against its service (``Wanted`` for many)."""
    return Wanted(service).dirty(task)


@dataclasses.dataclass(frozen=True, slots=True)
class SlotView:
    """One live slot as the rollout sees it: its current task, whether that task is
    dirty, and whether this pass already replaces it for another reason (a restart, a
    lost node) — the replacement will run the current spec either way."""

    key: int | str
    current: Resource | None  # None while the slot's replacement is being made
    dirty: bool
    replacing: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Rollout:
    """The decision: slots to replace now, and what to tell the user."""

    replace: list[int | str]
    state: State
    message: str
    updated: int
    total: int
    requeue_after: float | None = None

    def status(self) -> dict[str, Any]:
        """``status.update`` of the Service."""
        return {"state": self.state, "message": self.message,
                "updatedTasks": self.updated, "totalTasks": self.total}


def failures(tasks: Iterable[Resource], generation: int,
             monitor: float | None = None) -> list[Resource]:
    """Tasks of ``generation`` that count as failures of its rollout, oldest first:
    rejected ones, and failed ones — with ``monitor``, only those that failed within
    that long of being created (a task that ran well and died later is the restart
    policy's business, not the update's)."""
    out = []
    for t in tasks:
        if ts.generation_of(t) != generation:
            continue
        state = ts.observed_state(t)
        if state == ts.REJECTED:
            out.append(t)
        elif state == ts.FAILED:
            ended = ts.status_time(t)
            if monitor is None or ended is None or ended - ts.creation_time(t) <= monitor:
                out.append(t)
    return sorted(out, key=lambda t: (ts.status_time(t) or 0.0, t.metadata.name))


def _describe_failure(task: Resource) -> str:
    where = f" on node {ts.node_name_of(task)}" if ts.node_name_of(task) else ""
    err = str(task.status.get("err") or task.status.get("message") or "no error reported")
    return f"task {task.metadata.name} {ts.observed_state(task)}{where}: {err}"


def decide(slots: Sequence[SlotView], failed: Sequence[Resource], now: float,
           config: UpdateConfig = SWARM_DEFAULTS,
           previous: Mapping[str, Any] | None = None) -> Rollout | None:
    """Which dirty slots to replace in this pass.

    ``slots``: the live slots (not those being scaled away). ``failed``: the current
    generation's failed or rejected tasks (``failures``). ``previous``: the service's
    ``status.update`` as stored. None when there is nothing to report: no dirty slot
    and no rollout was under way.
    """
    dirty = [s for s in slots if s.dirty and not s.replacing]
    total = len(slots)
    updated = total - len(dirty)
    was = (previous or {}).get("state")
    if not dirty and was not in (UPDATING, PAUSED):
        return None
    if config.pauses_after(len(failed), total):
        last = failed[-1]
        note = ("; failure action is rollback, which is not built yet: fix the service "
                "and apply it again" if config.failure_action == "rollback" else "")
        return Rollout([], PAUSED, f"update paused due to failure of "
                       f"{_describe_failure(last)}{note}", updated, total)
    fresh = [s for s in slots if not s.dirty or s.replacing]
    starting = [s for s in fresh if s.replacing or s.current is None or (
        not ts.has_ended(s.current) and not ts.is_running(s.current))]
    if not dirty:
        if starting:
            return Rollout([], UPDATING, f"update in progress: {updated} out of {total} "
                           "tasks updated, the last starting", updated, total)
        return Rollout([], COMPLETED, "update completed", updated, total)
    budget = len(dirty) if config.parallelism <= 0 else config.parallelism - len(starting)
    requeue: float | None = None
    if budget > 0 and config.delay > 0:
        # The delay runs from the newest up-to-date task's start (its running report).
        # Agents stamp whole seconds, truncated: the report came up to a second after
        # its stamp, so the stamp's next second is when the delay surely began — a batch
        # may wait up to a second longer than asked, never less.
        since = max((t + STAMP_RESOLUTION
                     for t in (ts.status_time(s.current) for s in fresh
                               if s.current is not None and ts.is_running(s.current))
                     if t is not None), default=None)
        if since is not None and now - since < config.delay:
            requeue = config.delay - (now - since)
            budget = 0
    chosen = [s.key for s in sorted(dirty, key=_order)[:max(budget, 0)]]
    message = f"update in progress: {updated} out of {total} tasks updated"
    return Rollout(chosen, UPDATING, message, updated, total, requeue)


def _order(slot: SlotView) -> tuple[int, int, str]:
    return (0, slot.key, "") if isinstance(slot.key, int) else (1, 0, slot.key)
