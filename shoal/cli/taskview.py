"""How swctl reads tasks for people: slots with their history, replica counts, task counts
per node, and Docker's "5 seconds ago" times. Pure functions over already-listed objects.

``service ps``, ``get services`` (the REPLICAS column), ``node ls`` (TASKS) and the
convergence progress of ``apply``/``scale`` all group the same tasks the same way; keeping
that here means they agree on which task is a slot's current one and what counts as
running. Task order and the state vocabulary come from the controllers' own helpers
(``taskstates``, ``taskspec.age_key``), so swctl never disagrees with the
orchestrator about which task is newest. The orchestrator package is imported only when
tasks are grouped: importing it pulls in the scheduler, which every other verb would pay
for at start-up.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Final

from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource

GLOBAL: Final = "global"
REPLICATED: Final = "replicated"
#: How the scheduler's explanation for a task it cannot place begins
#: (``scheduler.filters.explain``). A pending task's ``status.message`` otherwise holds
#: the orchestrator's reason for creating it ("slot 2 of 5"), which is no error.
UNPLACEABLE_PREFIX: Final = "no suitable node"

ServiceKey = tuple[str, str]  # (namespace, service name)


def mode_of(service: Resource) -> str:
    """``replicated`` (the schema default) or ``global``."""
    return GLOBAL if service.spec.get("mode") == GLOBAL else REPLICATED


def replicas_of(service: Resource) -> int:
    try:
        return max(0, int(service.spec.get("replicas", 1)))
    except (TypeError, ValueError):
        return 0


def service_key_of(task: Resource) -> ServiceKey | None:
    name = ts.service_name(task)
    return None if name is None else (ts.namespace_of(task), name)


def tasks_by_service(tasks: Iterable[Resource]) -> dict[ServiceKey, list[Resource]]:
    """Tasks grouped by owning service: one pass over one list call."""
    out: dict[ServiceKey, list[Resource]] = {}
    for task in tasks:
        key = service_key_of(task)
        if key is not None:
            out.setdefault(key, []).append(task)
    return out


# --- slots ---

@dataclasses.dataclass
class Slot:
    """One slot of a replicated service (``key`` is its number) or one node of a global
    service (``key`` is the node name), with its tasks newest first."""

    key: int | str
    tasks: list[Resource]

    @property
    def active(self) -> list[Resource]:
        """Tasks the controllers still want running, newest first."""
        return [t for t in self.tasks if ts.is_active_desired(t)]

    @property
    def current(self) -> Resource:
        """The task ``service ps`` shows first: the newest one wanted running, else the
        newest of all (a slot the restart policy gave up on still shows why)."""
        active = self.active
        return active[0] if active else self.tasks[0]

    @property
    def history(self) -> list[Resource]:
        current = self.current
        return [t for t in self.tasks if t is not current]


def slot_key(task: Resource, mode: str) -> int | str:
    """Slot number for replicated tasks; node name (``""`` if unassigned) for global."""
    if mode == GLOBAL:
        return ts.node_name_of(task) or ""
    return ts.slot_of(task)


def group_slots(tasks: Iterable[Resource], mode: str) -> list[Slot]:
    """Tasks of one service by slot (or node), slots in order, tasks newest first."""
    from shoal.controllers import taskspec

    groups: dict[int | str, list[Resource]] = {}
    for task in tasks:
        groups.setdefault(slot_key(task, mode), []).append(task)
    slots = [Slot(key, sorted(items, key=taskspec.age_key, reverse=True))
             for key, items in groups.items()]
    # Numbers sort numerically, node names alphabetically; the two never mix in a
    # well-formed service, but a stray task must not make sorting raise.
    slots.sort(key=lambda s: (isinstance(s.key, str), s.key if isinstance(s.key, int) else 0,
                              str(s.key)))
    return slots


def slot_label(service_name: str, slot: Slot | int | str) -> str:
    """``web.1`` for slot 1, ``web.node-a`` for a global service's task on node-a."""
    key = slot.key if isinstance(slot, Slot) else slot
    return f"{service_name}.{key}" if key != "" else f"{service_name}.<unassigned>"


# --- counts ---

def replica_share(task: Resource) -> tuple[ServiceKey, int] | None:
    """What one task adds to its service's REPLICAS: (service, 1 if running else 0), or
    None when it counts for nothing (no service, or no longer wanted running)."""
    key = service_key_of(task)
    if key is None or not ts.is_active_desired(task):
        return None
    return key, int(ts.is_running(task))


def replicas_cell(service: Resource, counts: dict[ServiceKey, tuple[int, int]]) -> str:
    """``running/desired`` as ``docker service ls`` shows it.

    Desired is ``spec.replicas`` for a replicated service, and for a global service the
    number of tasks the orchestrator wants running (one per eligible node).
    """
    key = (service.metadata.namespace or "default", service.metadata.name)
    running, wanted = counts.get(key, (0, 0))
    if mode_of(service) == GLOBAL:
        return f"{running}/{wanted}"
    # Running may exceed desired for a moment during a scale-down: shown as is.
    return f"{running}/{replicas_of(service)}"


def tasks_per_node(tasks: Iterable[Resource]) -> dict[str, int]:
    """Tasks each node holds: wanted running and not yet ended (what it is running or about
    to run), as ``docker node ps`` would list by default."""
    out: dict[str, int] = {}
    for task in tasks:
        node = ts.node_name_of(task)
        if node and ts.is_active_desired(task) and not ts.has_ended(task):
            out[node] = out.get(node, 0) + 1
    return out


# --- time ---

def human_since(seconds: float) -> str:
    """Docker's human durations: ``Less than a second``, ``5 seconds``, ``About a
    minute``, ``3 hours``, ``2 weeks`` ... (``docker service ps`` CURRENT STATE)."""
    if seconds < 1:
        return "Less than a second"
    secs = int(seconds)
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = secs // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


def current_state_cell(task: Resource, now: float | None = None) -> str:
    """``Running 5 seconds ago``: the observed state and how long it has held;
    ``Unknown 8 seconds ago`` while the task's node is down (since it went down)."""
    state = ts.shown_state(task)
    when = (_unreachable_since(task) if state == ts.UNKNOWN else None) or \
        ts.status_time(task) or ts.creation_time(task)
    state = state.capitalize()
    if not when:
        return state
    now = time.time() if now is None else now
    return f"{state} {human_since(max(0.0, now - when))} ago"


def _unreachable_since(task: Resource) -> float | None:
    for cond in task.status.get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == ts.NODE_REACHABLE:
            return ts.parse_timestamp(cond.get("lastTransitionTime"))
    return None


def state_cell(task: Resource) -> str:
    """The STATE cell of ``get tasks``: the observed state, ``unknown`` while the task's
    node is down."""
    return ts.shown_state(task)


def failed_conditions(obj: Resource) -> str:
    """The messages of the object's conditions that are False (a controller could not do
    its part: ``Allocated`` — a network missing or full, a port taken —, ``Valid``),
    ``; ``-joined; "" when there are none."""
    found = obj.status.get("conditions")
    if not isinstance(found, list):
        return ""
    return "; ".join(str(c.get("message") or c.get("reason") or c.get("type"))
                     for c in found if isinstance(c, dict) and c.get("status") == "False")


def error_cell(task: Resource) -> str:
    """What went wrong with a task, or why it waits: the error of a task that ended by
    itself, else what a controller could not do for it (a False condition), else the
    scheduler's explanation for one still pending."""
    err = task.status.get("err")
    if err:
        return str(err)
    failed = failed_conditions(task)
    if failed:
        return failed
    state = ts.observed_state(task)
    message = str(task.status.get("message") or "")
    if state in (ts.NEW, ts.PENDING) and message.startswith(UNPLACEABLE_PREFIX):
        return message
    if message and state in ts.SELF_ENDED:
        return message
    code = task.status.get("exitCode")
    if state == ts.FAILED and code not in (None, 0):
        return f"task: non-zero exit ({code})"
    return ""
