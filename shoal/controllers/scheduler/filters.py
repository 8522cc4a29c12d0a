"""Scheduler filters: which nodes may take a task, and why the others may not.

The filters run in Swarm's order — node ready and active, resource reservations (cpu,
memory), constraints, platform, host-mode published ports, max replicas per node — and
each can explain itself, so a task that fits nowhere stays pending with a message the user
can act on::

    no suitable node (constraint node.labels.zone==c matched 0 of 5 nodes; 1 node drained)

This module also owns the two per-batch views the filters read: ``NodeInfo`` (one node's
capacity and what its live tasks already hold) and ``Demand`` (what one group of identical
tasks — one service at one generation — asks for). Parsing a service spec into a Demand
happens once per group, never per task, which is what lets the placement loop stay cheap.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

from shoal.controllers import nodefacts
from shoal.crds import constraints as cons
from shoal.crds import units
from shoal.crds.resource import Resource

#: (namespace, name) of a service.
ServiceKey = tuple[str, str]

#: Stands in for the capacity of a node that does not report resources: such a node (a
#: hollow one, say) never fails the resource filter, instead of never passing it.
UNLIMITED: Final = 1 << 62
NANO: Final = 1_000_000_000

READY: Final = "ready"
ACTIVE: Final = "active"
PAUSE: Final = "pause"
DRAIN: Final = "drain"


def plural(count: int, word: str = "node") -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@dataclasses.dataclass(slots=True, eq=False)
class NodeInfo:
    """One node as the scheduler sees it during a batch; mutated as tasks are placed."""

    idx: int  # position in the batch's name-sorted node list: also the final tie-breaker
    name: str
    facts: nodefacts.NodeFacts
    state: str  # status.state: ready | down | unknown
    availability: str  # spec.availability: active | pause | drain
    cpu_capacity: int  # nano-CPUs
    mem_capacity: int  # bytes
    cpu_free: int
    mem_free: int
    active: int = 0  # tasks desired running here: the "fewest tasks overall" tie-breaker
    host_ports: set[tuple[int, str]] = dataclasses.field(default_factory=set)

    @property
    def schedulable(self) -> bool:
        """Ready and active: may take new tasks at all."""
        return self.state == READY and self.availability == ACTIVE

    @classmethod
    def of(cls, node: Resource, idx: int) -> NodeInfo:
        resources = node.status.get("resources")
        if not isinstance(resources, dict):
            resources = {}  # as unreadable as absent: no capacity claims (constraints.py)
        cpus = _capacity(resources.get("cpus"), _nano_cpus)
        memory = _capacity(resources.get("memory"), _bytes)
        return cls(idx=idx, name=node.metadata.name, facts=nodefacts.NodeFacts.of(node),
                   state=str(node.status.get("state") or "unknown"),
                   availability=str(node.spec.get("availability") or ACTIVE),
                   cpu_capacity=cpus, mem_capacity=memory, cpu_free=cpus, mem_free=memory)


def _capacity(value: Any, parse: Callable[[Any], int]) -> int:
    if value is None or value == "":
        return UNLIMITED
    try:
        return parse(value)
    except ValueError:
        # An agent reporting garbage must not make its node look infinitely large.
        return 0


# The unit parsers are cached: services repeat a handful of spellings ("0.5", "64Mi")
# across thousands of specs, and the exact-arithmetic parsers would otherwise dominate a
# large batch. ``typed`` keeps True from sharing 1's entry.
@functools.lru_cache(maxsize=4096, typed=True)
def _cached_nano_cpus(value: str | int | float) -> int:
    return round(units.parse_cpus(value) * NANO)


@functools.lru_cache(maxsize=4096, typed=True)
def _cached_bytes(value: str | int | float) -> int:
    return units.parse_size(value)


def _nano_cpus(value: Any) -> int:
    if not isinstance(value, str | int | float):
        raise ValueError(f"invalid CPU count {value!r}")
    return _cached_nano_cpus(value)


def _bytes(value: Any) -> int:
    if not isinstance(value, str | int | float):
        raise ValueError(f"invalid size {value!r}")
    return _cached_bytes(value)


@functools.lru_cache(maxsize=4096)
def _constraints(items: tuple[str, ...]) -> tuple[cons.Constraint, ...]:
    return cons.parse_constraints(items)


class SpecError(ValueError):
    """A service spec the scheduler cannot act on (bad constraint, cpus, memory, ...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Demand:
    """What every task of one service generation needs from a node."""

    service: ServiceKey
    nano_cpus: int = 0
    memory: int = 0
    constraints: tuple[cons.Constraint, ...] = ()
    platforms: tuple[tuple[str, str], ...] = ()  # (os, arch); empty = any
    host_ports: tuple[tuple[int, str], ...] = ()  # (published, protocol), mode host
    max_replicas: int = 0  # 0 = unlimited
    spread: tuple[str, ...] = ()  # spread descriptors, outermost first
    error: str = ""  # why the spec cannot be scheduled; empty when it can

    @property
    def static_key(self) -> tuple[Any, ...]:
        """The filters whose answer does not change while a batch places tasks."""
        return (self.constraints, self.platforms)

    @property
    def signature(self) -> tuple[Any, ...]:
        """Everything but the service: equal signatures see the same nodes the same way."""
        return (self.nano_cpus, self.memory, self.constraints, self.platforms,
                self.host_ports, self.max_replicas, self.spread)


def _section(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = spec.get(name)
    return value if isinstance(value, dict) else {}


def demand_for(service_key: ServiceKey, service: Resource | None,
               task: Resource | None = None) -> Demand:
    """Read what a task needs: reservations from the task's own copy of the template (the
    template at its ``serviceGeneration``) when it has one, placement and published ports
    from the service (or the task, if it carries them). Never raises: a bad field becomes
    ``Demand.error`` and everything else is still read, because tasks already running from
    a spec that has since gone bad still hold their reservations and ports.
    """
    service_spec = service.spec if service is not None else {}
    task_spec = task.spec if task is not None else {}
    template = _section(task_spec, "template") or _section(service_spec, "template")
    placement = _section(task_spec, "placement") or _section(service_spec, "placement")
    endpoint = _section(task_spec, "endpoint") or _section(service_spec, "endpoint")
    reservations = _section(_section(template, "resources"), "reservations")
    errors: list[str] = []

    nano_cpus = memory = max_replicas = 0
    if reservations.get("cpus") not in (None, ""):
        try:
            nano_cpus = _nano_cpus(reservations["cpus"])
        except ValueError as exc:
            errors.append(f"reservations.cpus: {exc}")
    if reservations.get("memory") not in (None, ""):
        try:
            memory = _bytes(reservations["memory"])
        except ValueError as exc:
            errors.append(f"reservations.memory: {exc}")

    constraints: tuple[cons.Constraint, ...] = ()
    try:
        constraints = _constraints(tuple(str(c) for c in placement.get("constraints") or ()))
    except cons.ConstraintError as exc:
        errors.append(str(exc))

    spread: list[str] = []
    for pref in placement.get("preferences") or ():
        descriptor = pref.get("spread") if isinstance(pref, dict) else None
        if descriptor is None:
            continue  # only "spread" exists today; unknown preference kinds are ignored
        try:
            spread.append(cons.parse_spread(str(descriptor)))
        except cons.ConstraintError as exc:
            errors.append(str(exc))

    try:
        max_replicas = int(placement.get("maxReplicasPerNode") or 0)
    except (TypeError, ValueError):
        errors.append(f"invalid maxReplicasPerNode {placement.get('maxReplicasPerNode')!r}")

    platforms = nodefacts.platforms_of(placement)

    ports: list[tuple[int, str]] = []
    for port in endpoint.get("ports") or ():
        if not isinstance(port, dict) or port.get("mode") != "host":
            continue
        try:
            published = int(port.get("published") or 0)
        except (TypeError, ValueError):
            continue
        if published:
            ports.append((published, str(port.get("protocol") or "tcp").lower()))

    return Demand(service=service_key, nano_cpus=nano_cpus, memory=memory,
                  constraints=constraints, platforms=platforms,
                  host_ports=tuple(sorted(set(ports))), max_replicas=max(max_replicas, 0),
                  spread=tuple(spread), error="; ".join(errors))


# --- the filters -------------------------------------------------------------------------
#
# A filter answers three questions: does it apply to this demand, does this node pass, and
# how to say why nodes failed — in aggregate (pending explanation) or for one node (a task
# pinned to a node, as global tasks are). ``service_tasks`` is how many tasks of the
# demand's service the node runs: only max-replicas needs it.


class Filter:
    """Base: a filter that applies to every demand and rejects no node."""

    name: ClassVar[str] = "filter"
    #: Static filters read nothing that placing tasks changes, so their verdict can be
    #: computed once per batch and shared by every group with the same static key.
    static: ClassVar[bool] = False

    def enabled(self, demand: Demand) -> bool:
        return True

    def check(self, node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
        return True

    def why_not(self, node: NodeInfo, demand: Demand) -> str:
        return self.name

    def explain(self, survivors: Sequence[NodeInfo], everyone: Sequence[NodeInfo],
                demand: Demand, service_tasks: Callable[[NodeInfo], int]
                ) -> list[tuple[int, str]]:
        """(nodes ruled out, text) entries for the pending message. The default charges
        every node that reached this filter and fails it."""
        failed = sum(1 for n in survivors if not self.check(n, demand, service_tasks(n)))
        return [(failed, self.aggregate(failed, demand))] if failed else []

    def aggregate(self, count: int, demand: Demand) -> str:
        return f"{self.name} failed on {plural(count)}"


class ReadyFilter(Filter):
    """Node ready and availability active. Reports each kind of unavailability apart
    ("2 nodes down; 1 node drained"), because each calls for a different fix."""

    name = "ready"
    static = True

    def check(self, node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
        return node.state == READY and node.availability == ACTIVE

    @staticmethod
    def category(node: NodeInfo) -> str:
        if node.state != READY:
            return "down" if node.state == "down" else "not ready"
        return {PAUSE: "paused", DRAIN: "drained"}.get(node.availability, node.availability)

    def why_not(self, node: NodeInfo, demand: Demand) -> str:
        return self.category(node)

    def explain(self, survivors: Sequence[NodeInfo], everyone: Sequence[NodeInfo],
                demand: Demand, service_tasks: Callable[[NodeInfo], int]
                ) -> list[tuple[int, str]]:
        counts: dict[str, int] = {}
        for node in survivors:
            if not node.schedulable:
                category = self.category(node)
                counts[category] = counts.get(category, 0) + 1
        ordered = sorted(counts.items(), key=lambda kv: (_CATEGORY_ORDER.get(kv[0], 9), kv[0]))
        return [(n, f"{plural(n)} {category}") for category, n in ordered]


_CATEGORY_ORDER: Final = {"down": 0, "not ready": 1, "paused": 2, "drained": 3}


class CpuFilter(Filter):
    name = "cpu"

    def enabled(self, demand: Demand) -> bool:
        return demand.nano_cpus > 0

    def check(self, node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
        return node.cpu_free >= demand.nano_cpus

    def why_not(self, node: NodeInfo, demand: Demand) -> str:
        return "insufficient cpu"

    def aggregate(self, count: int, demand: Demand) -> str:
        return f"insufficient cpu on {plural(count)}"


class MemoryFilter(Filter):
    name = "memory"

    def enabled(self, demand: Demand) -> bool:
        return demand.memory > 0

    def check(self, node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
        return node.mem_free >= demand.memory

    def why_not(self, node: NodeInfo, demand: Demand) -> str:
        return "insufficient memory"

    def aggregate(self, count: int, demand: Demand) -> str:
        return f"insufficient memory on {plural(count)}"


class ConstraintFilter(Filter):
    """Reports every constraint that does not hold everywhere as "matched M of N nodes",
    counted over all nodes: that is the number a user compares with their node labels."""

    name = "constraints"
    static = True

    def enabled(self, demand: Demand) -> bool:
        return bool(demand.constraints)

    def check(self, node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
        return nodefacts.match_all(demand.constraints, node.facts)

    def why_not(self, node: NodeInfo, demand: Demand) -> str:
        for constraint in demand.constraints:
            if not nodefacts.matches(constraint, node.facts):
                return f"constraint {constraint} not satisfied"
        return "constraints satisfied"

    def explain(self, survivors: Sequence[NodeInfo], everyone: Sequence[NodeInfo],
                demand: Demand, service_tasks: Callable[[NodeInfo], int]
                ) -> list[tuple[int, str]]:
        total = len(everyone)
        out = []
        for constraint in demand.constraints:
            matched = sum(1 for n in everyone if nodefacts.matches(constraint, n.facts))
            if matched < total:
                out.append((total - matched,
                            f"constraint {constraint} matched {matched} of {plural(total)}"))
        return out


class PlatformFilter(Filter):
    name = "platform"
    static = True

    def enabled(self, demand: Demand) -> bool:
        return bool(demand.platforms)

    def check(self, node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
        return nodefacts.matches_platforms(demand.platforms, node.facts)

    @staticmethod
    def wanted(demand: Demand) -> str:
        return " or ".join(f"{os or '*'}/{arch or '*'}" for os, arch in demand.platforms)

    def why_not(self, node: NodeInfo, demand: Demand) -> str:
        return f"platform {self.wanted(demand)} required"

    def aggregate(self, count: int, demand: Demand) -> str:
        return f"platform {self.wanted(demand)} not supported on {plural(count)}"


class HostPortFilter(Filter):
    """A node already holding a task that publishes one of the ports in host mode is out."""

    name = "host-ports"

    def enabled(self, demand: Demand) -> bool:
        return bool(demand.host_ports)

    def check(self, node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
        return not any(port in node.host_ports for port in demand.host_ports)

    @staticmethod
    def ports(demand: Demand) -> str:
        return ", ".join(f"{port}/{proto}" for port, proto in demand.host_ports)

    def why_not(self, node: NodeInfo, demand: Demand) -> str:
        return f"host port {self.ports(demand)} in use"

    def aggregate(self, count: int, demand: Demand) -> str:
        return f"host port {self.ports(demand)} in use on {plural(count)}"


class MaxReplicasFilter(Filter):
    name = "max-replicas"

    def enabled(self, demand: Demand) -> bool:
        return demand.max_replicas > 0

    def check(self, node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
        return service_tasks < demand.max_replicas

    def why_not(self, node: NodeInfo, demand: Demand) -> str:
        return f"max replicas per node ({demand.max_replicas}) reached"

    def aggregate(self, count: int, demand: Demand) -> str:
        return f"max replicas per node ({demand.max_replicas}) reached on {plural(count)}"


READY_FILTER: Final = ReadyFilter()
#: Swarm's order. Placement itself evaluates the static ones first (they are cached per
#: batch), which changes nothing about which nodes pass, only how fast.
FILTERS: Final[tuple[Filter, ...]] = (READY_FILTER, CpuFilter(), MemoryFilter(),
                                      ConstraintFilter(), PlatformFilter(), HostPortFilter(),
                                      MaxReplicasFilter())
STATIC_FILTERS: Final = tuple(f for f in FILTERS if f.static)
DYNAMIC_FILTERS: Final = tuple(f for f in FILTERS if not f.static)


def passes_static(node: NodeInfo, demand: Demand) -> bool:
    return all(f.check(node, demand, 0) for f in STATIC_FILTERS if f.enabled(demand))


def passes_all(node: NodeInfo, demand: Demand, service_tasks: int) -> bool:
    return all(f.check(node, demand, service_tasks) for f in FILTERS if f.enabled(demand))


def why_not(node: NodeInfo, demand: Demand, service_tasks: int) -> str | None:
    """The first filter that rejects ``node``, in words; None when the node fits."""
    for f in FILTERS:
        if f.enabled(demand) and not f.check(node, demand, service_tasks):
            return f.why_not(node, demand)
    return None


def explain(nodes: Sequence[NodeInfo], demand: Demand,
            service_tasks: Callable[[NodeInfo], int] = lambda n: 0) -> str:
    """Why no node in ``nodes`` can take a task of ``demand``.

    Nodes walk the filters in Swarm's order and each is charged to the first filter that
    rules it out (constraints, counted over all nodes, are the exception — see
    ``ConstraintFilter``). Reasons are listed biggest first, as Swarm does, so the main
    obstacle leads.
    """
    if not nodes:
        return "no suitable node (no nodes in the cluster)"
    entries: list[tuple[int, int, str]] = []
    survivors: Sequence[NodeInfo] = nodes
    for order, f in enumerate(FILTERS):
        if not f.enabled(demand):
            continue
        for count, text in f.explain(survivors, nodes, demand, service_tasks):
            entries.append((-count, order, text))
        survivors = [n for n in survivors if f.check(n, demand, service_tasks(n))]
    entries.sort(key=lambda e: (e[0], e[1]))  # stable: equal counts keep filter order
    if not entries:
        return "no suitable node"
    return "no suitable node (" + "; ".join(text for _, _, text in entries) + ")"
