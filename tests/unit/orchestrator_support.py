"""Shared by the orchestrator's pure-logic tests: nodes, a service and its tasks built in
memory (no etcd), at a fixed clock."""

from __future__ import annotations

from typing import Any

from shoal.controllers.orchestrator import slots
from shoal.crds.resource import Resource, new

NOW = 1_700_000_000.0


def node(name: str, *, state: str = "ready", availability: str = "active",
         labels: dict[str, str] | None = None) -> Resource:
    n = new("Node", name, labels=labels)
    n.spec = {"availability": availability, "role": "worker"}
    n.status = {"state": state}
    return n


def service(name: str = "web", replicas: int = 3, *, mode: str = "replicated",
            restart: dict[str, Any] | None = None, history: int | None = None,
            constraints: list[str] | None = None, generation: int = 1) -> Resource:
    spec: dict[str, Any] = {"mode": mode, "replicas": replicas, "template": {"image": "x"}}
    if restart is not None:
        spec["restartPolicy"] = restart
    if history is not None:
        spec["taskHistoryLimit"] = history
    if constraints:
        spec["placement"] = {"constraints": constraints}
    s = new("Service", name, "default", spec=spec)
    s.metadata.generation = generation
    return s


def task(slot: int | str, seq: int = 1, *, node_name: str | None = None,
         state: str = "running", desired: str = "running", ended: float | None = None,
         generation: int = 1, notes: dict[str, str] | None = None,
         service_name: str = "web", template: dict[str, Any] | None = None) -> Resource:
    """A task of ``service_name``: an int ``slot`` for replicated, a node name for global.
    It records ``template`` (default: ``service()``'s) as the orchestrator records the
    service's template on the tasks it makes."""
    t = new("Task", f"{service_name}.{slot}.{seq}", "default",
            labels={"shoal.io/service": service_name})
    t.spec = {"serviceName": service_name, "desiredState": desired,
              "serviceGeneration": generation,
              "template": {"image": "x"} if template is None else template}
    if isinstance(slot, int):
        t.spec["slot"] = slot
        if node_name:
            t.spec["nodeName"] = node_name
    else:
        t.spec["slot"] = 0
        t.spec["nodeName"] = slot
    t.metadata.creationTimestamp = "2023-11-14T22:00:00Z"
    t.metadata.annotations = dict(notes or {})
    t.status = {"state": state}
    if ended is not None:
        t.status["timestamp"] = ended
    return t


def names(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        obj = item.task if isinstance(item, slots.Shutdown) else item
        out.append(obj.name if isinstance(item, slots.Create) else obj.metadata.name)
    return sorted(out)


# --- task states -----------------------------------------------------------------------------
