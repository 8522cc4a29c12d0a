"""Shared by the scheduler's and node-facts' pure-logic tests: nodes, services and tasks
built in memory (no etcd), at a fixed clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

from shoal.controllers.scheduler import placement
from shoal.crds.resource import Resource, new

NOW = 1_700_000_000.0


def node(name: str, *, labels: dict[str, str] | None = None, state: str = "ready",
         availability: str = "active", role: str = "worker", address: str = "10.0.0.1",
         os: str = "linux", arch: str = "x86_64", cpus: float | None = None,
         memory: str | int | None = None, engine: dict[str, str] | None = None,
         uid: str = "") -> Resource:
    n = new("Node", name, labels=labels)
    n.metadata.uid = uid or f"uid-{name}"
    n.spec = {"availability": availability, "role": role}
    n.status = {"state": state, "address": address,
                "platform": {"os": os, "architecture": arch},
                "engineLabels": dict(engine or {})}
    if cpus is not None or memory is not None:
        n.status["resources"] = {"cpus": cpus, "memory": memory}
    return n


def service(name: str, replicas: int = 1, *, constraints: list[str] | None = None,
            spread: list[str] | None = None, max_per_node: int = 0,
            cpus: Any = None, memory: Any = None, host_ports: list[int] | None = None,
            platforms: list[dict[str, str]] | None = None, generation: int = 1) -> Resource:
    placement_spec: dict[str, Any] = {}
    if constraints:
        placement_spec["constraints"] = constraints
    if spread:
        placement_spec["preferences"] = [{"spread": s} for s in spread]
    if max_per_node:
        placement_spec["maxReplicasPerNode"] = max_per_node
    if platforms:
        placement_spec["platforms"] = platforms
    template: dict[str, Any] = {"image": "nginx"}
    reservations = {k: v for k, v in (("cpus", cpus), ("memory", memory)) if v is not None}
    if reservations:
        template["resources"] = {"reservations": reservations}
    spec: dict[str, Any] = {"mode": "replicated", "replicas": replicas, "template": template,
                            "placement": placement_spec}
    if host_ports:
        spec["endpoint"] = {"ports": [{"published": p, "target": 80, "mode": "host"}
                                      for p in host_ports]}
    s = new("Service", name, "default", spec=spec)
    s.metadata.generation = generation
    return s


def task(svc: Resource, slot: int, *, node_name: str | None = None, state: str = "pending",
         desired: str = "running", seq: int = 1, timestamp: float | None = None,
         generation: int | None = None) -> Resource:
    name = svc.metadata.name
    t = new("Task", f"{name}.{slot}.{seq}", "default",
            spec={"serviceName": name, "slot": slot, "desiredState": desired,
                  "serviceGeneration": svc.metadata.generation if generation is None
                  else generation,
                  "template": svc.spec["template"]},
            labels={"shoal.io/service": name})
    if node_name:
        t.spec["nodeName"] = node_name
    t.status = {"state": state}
    if timestamp is not None:
        t.status["timestamp"] = timestamp
    return t


def tasks_for(svc: Resource, count: int | None = None, start: int = 1) -> list[Resource]:
    return [task(svc, slot) for slot in range(start, start + (count or svc.spec["replicas"]))]


def zones_of(result: placement.ScheduleResult, nodes: list[Resource]) -> Counter[str]:
    zone = {n.metadata.name: n.metadata.labels.get("zone", "-") for n in nodes}
    return Counter(zone[name] for name in result.assignments.values())


# --- filters and explanations --------------------------------------------------------------
