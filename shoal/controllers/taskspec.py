"""What a task records of its service, when a task is dirty, and how a new Task is built.

Shared by the orchestrator (which creates tasks to fill and restart slots) and the
updater (which replaces tasks that run an out-of-date spec): both must build the same
Task and agree on what "runs the current spec" means, and each controller loop stands
alone (import-linter), so the rule lives here, beside ``nodefacts.py``. Pure: no I/O.

Dirty, as swarmkit's ``IsTaskDirty``: every new task records the parts of the service
that shape it (``RECORDED``: the template, placement, networks, endpoint and
``forceUpdate``); a task is dirty when one of its copies differs from the service's. A
replicas-only change bumps the service's generation but changes no copy, so it replaces
nothing. Tasks recorded before a section was copied compare that section as empty.
``placement.rebalance`` is how the updater may move tasks, not where a task may run:
it is left out of the comparison, so turning rebalancing on restarts nothing.

Task names are ``<service>.<slot>.<n>`` (``<service>.<node>.<n>`` for global services),
``n`` one past the slot's newest: ``sequence_of`` and ``age_key`` read them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from shoal.controllers import common
from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource

#: Service spec sections a task records (under the same name in ``Task.spec``; the
#: networks under ``requestedNetworks``, since ``spec.networks`` holds the allocator's
#: attachments). The scheduler already prefers a task's own placement and endpoint.
RECORDED: Final = ("template", "placement", "endpoint", "forceUpdate")
NETWORKS_FIELD: Final = "requestedNetworks"
#: Service spec sections a revision keeps (``forceUpdate`` is a restart, not a
#: revision; ``networks`` under its service name).
REVISION_SECTIONS: Final = ("template", "placement", "endpoint", "networks")
#: Task annotation: why a controller told the task to stop.
SHUTDOWN_REASON: Final = "shoal.io/shutdown-reason"
#: Task annotation the updater sets on the task a start-first replacement replaces (the
#: write compares the task's revision, so a slot changed meanwhile fails the create).
REPLACED_BY: Final = "shoal.io/replaced-by"
#: ``placement`` keys that do not shape a task (see the module docstring).
UNRECORDED_PLACEMENT: Final = frozenset({"rebalance"})


def _networks(value: Any) -> list[Any]:
    """``spec.networks`` in the form that compares: ``{name: x}`` without aliases is
    ``x``, so rewriting an entry in the long form restarts nothing; aliases do count
    (as in Swarm, they are part of what a task is attached with)."""
    if not isinstance(value, list):
        return []
    return [item["name"] if isinstance(item, dict) and not item.get("aliases")
            and set(item) <= {"name", "aliases"} else item for item in value]


def _endpoint(value: Any) -> tuple[str, list[Any]]:
    """An endpoint with the defaults an absent one means: vip, no ports."""
    ep = value if isinstance(value, dict) else {}
    return (str(ep.get("mode") or "vip"), list(ep.get("ports") or []))


def placement_of(value: Any) -> dict[str, Any]:
    """``placement`` without the keys that do not shape a task (``rebalance``)."""
    if not isinstance(value, dict) or not value:
        return {}
    if UNRECORDED_PLACEMENT.isdisjoint(value):
        return value
    return {k: v for k, v in value.items() if k not in UNRECORDED_PLACEMENT}


def normal(section: str, value: Any) -> Any:
    """A recorded section in the form that compares: absent and empty are the same."""
    if section == "endpoint":
        return _endpoint(value)
    if section == "forceUpdate":
        return value or 0
    if section in (NETWORKS_FIELD, "networks"):
        return _networks(value)
    if section == "placement":
        return placement_of(value)
    return value or {}


def task_copy(service: Resource) -> dict[str, Any]:
    """What a new task of ``service`` records (merged into its ``spec``). Shared, not
    copied: the store only serialises them. Empty sections are left out."""
    spec = service.spec
    out: dict[str, Any] = {"template": spec.get("template") or {}}
    for section in RECORDED[1:]:
        value = spec.get(section)
        if section == "placement":
            value = placement_of(value)
        if value:
            out[section] = value
    if spec.get("networks"):
        out[NETWORKS_FIELD] = spec["networks"]
    return out


def revision_spec(service: Resource) -> dict[str, Any]:
    """The sections of ``service`` a revision keeps, in the form that compares (absent
    and empty alike), so equal specs give equal dicts."""
    spec = service.spec
    out: dict[str, Any] = {"template": spec.get("template") or {}}
    placement = placement_of(spec.get("placement"))
    if placement:
        out["placement"] = placement
    endpoint = spec.get("endpoint")
    if isinstance(endpoint, dict) and normal("endpoint", endpoint) != normal("endpoint", None):
        out["endpoint"] = endpoint
    if _networks(spec.get("networks")):
        out["networks"] = spec["networks"]
    return out


def same_revision(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Do two revision specs run the same tasks?"""
    return all(normal(s, a.get(s)) == normal(s, b.get(s)) for s in REVISION_SECTIONS)


class Wanted:
    """The service's sections as tasks must record them to be clean.

    Built once per pass. Tasks of one service generation were all made from the same
    spec, so the verdict is remembered per generation of the task: a 1,000-task service
    after a replicas-only change compares once, not 1,000 times."""

    def __init__(self, service: Resource) -> None:
        spec = service.spec
        self.generation = service.metadata.generation
        self._sections = {s: normal(s, spec.get(s)) for s in RECORDED}
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
        return any(normal(s, spec.get(s)) != want for s, want in self._sections.items())


def is_dirty(task: Resource, service: Resource) -> bool:
    """One task against its service (``Wanted`` for many)."""
    return Wanted(service).dirty(task)


def new_task(service: Resource, name: str, slot: int, node_name: str | None, reason: str,
             annotations: Mapping[str, str] | None = None) -> Resource:
    """A Task of ``service``'s current spec, pending, for the scheduler (or pinned to
    ``node_name``: global services). ``slot`` is 0 for global tasks."""
    namespace = service.metadata.namespace or resource.DEFAULT_NAMESPACE
    task = resource.new("Task", name, namespace,
                        labels={ts.SERVICE_LABEL: service.metadata.name})
    task.apiVersion = common.TASKS.api_version
    task.metadata.ownerReferences = [resource.owner_reference(service)]
    if annotations:
        task.metadata.annotations = dict(annotations)
    # The task records what shapes it: that copy is what tells a dirty task later.
    # Shared, not copied: the store only serialises it, and every task of a pass
    # carries the same one.
    spec: dict[str, Any] = {"serviceName": service.metadata.name, "slot": slot,
                            **task_copy(service),
                            "desiredState": ts.RUNNING,
                            "serviceGeneration": service.metadata.generation}
    if node_name is not None:
        spec["nodeName"] = node_name
    task.spec = spec
    task.status = {"state": ts.PENDING, "message": reason,
                   "timestamp": resource.now_rfc3339()}
    return task


def age_key(task: Resource) -> tuple[float, int, str]:
    """Orders a slot's tasks oldest first: creation time, then the sequence number at the
    end of task names (creation stamps have 1 s resolution)."""
    return (ts.creation_time(task), sequence_of(task), task.metadata.name)


def sequence_of(task: Resource) -> int:
    """``3`` for ``web.2.3``; 0 for names the controllers did not make."""
    tail = task.metadata.name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def next_name(service: str, key: int | str, slot_tasks: list[Resource]) -> str:
    """The name of a slot's next task: one past the slot's newest sequence number."""
    seq = max((sequence_of(t) for t in slot_tasks), default=0) + 1
    return f"{service}.{key}.{seq}"
