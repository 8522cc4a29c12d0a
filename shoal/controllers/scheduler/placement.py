"""Placement: choose a node for every pending task of a batch, Swarm's way, fast.

Semantics (Swarm's): tasks are grouped by service and generation; every task of a group
is identical, so the filters and the spread tree are worked out once per group. Nodes that
pass the filters are arranged in a tree by the service's spread preferences (nested, in
the order given; nodes without the label form their own group) and each task goes down
the branch holding the fewest tasks of the service — which spreads a group evenly over
the label values, whatever the number of nodes behind each value. Within the chosen leaf
the node is picked by: nodes that failed 5 tasks of this service generation in the last
5 minutes last, then fewest tasks of the service, then fewest tasks overall, then name.
Assignments update the node counts at once, so later tasks and groups of the same batch
see them. No bin-packing and no rebalancing of tasks already placed.

Speed is the other half of this module's job (100,000 tasks on 1,000 nodes must go well
beyond 5,000 placements/s in Python). The costs are arranged so:

* per batch: one pass over the nodes and one over the tasks already on nodes to build
  ``NodeInfo``; the static filters (ready, constraints, platform) and the spread tree are
  computed once per distinct placement spec and cached;
* per group: work proportional to the nodes that already run the service, not to the
  cluster — a group of 3 replicas on 1,000 nodes touches a handful of nodes, not 1,000;
* per task: a few heap operations. Each leaf of the tree merges two sources: a heap of
  the nodes that already run the service (keyed by the full ordering), and a stream over
  one batch-wide list of all nodes sorted by (tasks overall, index) for nodes that run
  none of it — for those the ordering reduces to exactly that sort, so no per-group sort
  is needed. Resources and ports only shrink during a batch, so a node that cannot fit a
  task of the group is dropped for the rest of the group instead of rechecked.

Everything is deterministic: the same inputs always give the same assignments.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

from shoal.controllers import nodefacts
from shoal.controllers.scheduler import filters as flt
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource

#: A node that failed this many tasks of a service generation within ``FAILURE_WINDOW``
#: seconds goes to the back of the line for that generation (swarmkit's numbers).
MAX_FAILURES: Final = 5
FAILURE_WINDOW: Final = 300.0

_RUNNING_RANK: Final = ts.RUNNING_RANK
_PENDING_RANK: Final = ts.RANK[ts.PENDING]
_RANK: Final = ts.RANK
_FAILURE_STATES: Final = frozenset({ts.FAILED, ts.REJECTED})


class ScheduleResult(NamedTuple):
    """``assignments``: task key -> node name. ``unplaced``: task key -> why not."""

    assignments: dict[str, str]
    unplaced: dict[str, str]


class Charge(NamedTuple):
    """What one task holds on its node, exactly as ``ClusterState`` counts it.

    A scheduler that keeps one ``ClusterState`` alive across batches remembers the charge
    of every task and, when the task changes, applies the old charge negatively and the
    new one positively; recording the values (not re-deriving them) is what keeps the
    books balanced when a service's spec changes in between.
    """

    node: int  # index into ClusterState.nodes
    service: flt.ServiceKey
    nano_cpus: int
    memory: int
    host_ports: tuple[tuple[int, str], ...]
    active: bool  # desired running: counts for spreading, max replicas, tasks overall


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """The spread tree of one placement spec over the nodes that pass its static filters.

    Tree nodes are integers, 0 is the root. A tree without spread preferences is a single
    leaf. ``leaf_of[node index]`` is the leaf a cluster node hangs under, -1 if filtered out.
    """

    parent: list[int]
    children: list[list[int]]
    rank: list[int]  # position among siblings (label values in order, "no label" last)
    siblings: list[int]  # number of children of the parent (1 for the root)
    leaf_of: list[int]


def _service_index(services: Iterable[Resource] | Mapping[Any, Resource]
                   ) -> dict[flt.ServiceKey, Resource]:
    values = services.values() if isinstance(services, Mapping) else services
    return {(ts.namespace_of(s), s.metadata.name): s for s in values}


class ClusterState:
    """The nodes and what their tasks hold, as of one batch; ``place`` mutates it.

    Built once per batch from the informer caches, or kept alive across batches and fed
    every task, node and service change (``apply``, ``update_node``, ``set_service``), as
    the scheduler controller does.
    """

    def __init__(self, nodes: Iterable[Resource], tasks_on_nodes: Iterable[Resource],
                 services: Iterable[Resource] | Mapping[Any, Resource], *,
                 now: float | None = None, exclude: Iterable[str] = ()) -> None:
        ordered = sorted(nodes, key=lambda n: n.metadata.name)
        self.nodes: list[flt.NodeInfo] = [flt.NodeInfo.of(n, i) for i, n in enumerate(ordered)]
        self.by_name: dict[str, flt.NodeInfo] = {n.name: n for n in self.nodes}
        self.services = _service_index(services)
        self.now = now
        # service -> node index -> tasks of the service desired running there
        self.service_tasks: dict[flt.ServiceKey, dict[int, int]] = {}
        # (service, generation) -> node index -> recent failures there
        self.failures: dict[tuple[flt.ServiceKey, int], dict[int, int]] = {}
        self._demands: dict[tuple[flt.ServiceKey, int], flt.Demand] = {}
        self._static: dict[tuple[Any, ...], list[bool]] = {}
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self._explained: dict[tuple[Any, ...], str] = {}
        self._version = 0  # bumped on every placement; keys the explanation cache
        # node index -> (port, protocol) -> tasks holding it: lets ``apply`` release a
        # port only when its last holder goes. Host-mode ports are rare; this stays tiny.
        self._port_refs: dict[int, dict[tuple[int, str], int]] = {}
        self._account(tasks_on_nodes, frozenset(exclude))
        n = len(self.nodes)
        # All nodes by (tasks overall, index), encoded as one int so bisect and sort
        # compare machine integers: the shared stream every leaf reads untouched nodes from.
        self._order: list[int] = sorted(ni.active * n + ni.idx for ni in self.nodes)

    # -- building -------------------------------------------------------------------------

    def _account(self, tasks: Iterable[Resource], exclude: frozenset[str]) -> None:
        """Charge every task that holds its node and note recent failures, by the rules
        the scheduler's incremental books follow (``charge_of``), so a state built from
        a list of tasks is the state the scheduler would have reached task by task."""
        window_start = None if self.now is None else self.now - FAILURE_WINDOW
        for task in tasks:
            if exclude and ts.task_key(task) in exclude:
                continue
            charge = self.charge_of(task)
            if charge is not None:
                self._book(self.nodes[charge.node], charge, 1)
            elif window_start is not None:
                failure = self.failure_of(task, window_start)
                if failure is not None:
                    self.count_failure(*failure[:3])

    def failure_of(self, task: Resource, window_start: float,
                   ) -> tuple[flt.ServiceKey, int, int, float] | None:
        """(service, generation, node index, when) of a task that failed or was rejected
        on a node this state knows at or after ``window_start``; None for any other, and
        for one stamped ahead of now (``window_start + FAILURE_WINDOW``): a stamp from a
        clock ahead (``taskstates.status_time_until``) would keep the node "recently
        failing" for as long as the clocks disagreed by."""
        if task.status.get("state") not in _FAILURE_STATES:
            return None
        info = self.by_name.get(ts.node_name_of(task) or "")
        name = ts.service_name(task)
        stamp = ts.status_time_until(task, window_start + FAILURE_WINDOW)
        if info is None or name is None or stamp is None or stamp < window_start:
            return None
        return (ts.namespace_of(task), name), ts.generation_of(task), info.idx, stamp

    def _demand(self, svc: flt.ServiceKey, gen: int, task: Resource | None) -> flt.Demand:
        key = (svc, gen)
        demand = self._demands.get(key)
        if demand is None:
            demand = self._demands[key] = flt.demand_for(svc, self.services.get(svc), task)
        return demand

    def _static_mask(self, demand: flt.Demand) -> list[bool]:
        key = demand.static_key
        mask = self._static.get(key)
        if mask is None:
            mask = self._static[key] = [flt.passes_static(ni, demand) for ni in self.nodes]
        return mask

    def _shape(self, demand: flt.Demand) -> _Shape:
        key = (demand.static_key, demand.spread)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = self._build_shape(demand)
        return shape

    def _build_shape(self, demand: flt.Demand) -> _Shape:
        mask = self._static_mask(demand)
        if not demand.spread:
            return _Shape(parent=[-1], children=[[]], rank=[0], siblings=[1],
                          leaf_of=[0 if ok else -1 for ok in mask])
        parent: list[int] = [-1]
        children: list[list[int]] = [[]]
        value: list[str | None] = [None]
        child_of: dict[tuple[int, str | None], int] = {}
        leaf_of = [-1] * len(self.nodes)
        for info in self.nodes:
            if not mask[info.idx]:
                continue
            t = 0
            for descriptor in demand.spread:
                v = nodefacts.spread_value(info.facts, descriptor)
                child = child_of.get((t, v))
                if child is None:
                    child = child_of[(t, v)] = len(parent)
                    parent.append(t)
                    children.append([])
                    value.append(v)
                    children[t].append(child)
                t = child
            leaf_of[info.idx] = t
        rank = [0] * len(parent)
        siblings = [1] * len(parent)
        for kids in children:
            kids.sort(key=lambda c: (value[c] is None, value[c] or ""))
            for position, child in enumerate(kids):
                rank[child] = position
                siblings[child] = len(kids)
        return _Shape(parent=parent, children=children, rank=rank, siblings=siblings,
                      leaf_of=leaf_of)

    # -- keeping a state alive across batches ---------------------------------------------
    #
    # Rebuilding the state costs one pass over every task in the cluster; a scheduler fed
    # by informers instead applies each change as it happens: ``apply`` a task's charge
    # when it lands on a node and ``apply(..., -1)`` when it stops holding it, update
    # nodes in place, swap services. Adding or removing a node renumbers the nodes, so
    # that still takes a fresh state.

    def _hold_ports(self, info: flt.NodeInfo, ports: Iterable[tuple[int, str]],
                    sign: int) -> None:
        refs = self._port_refs.setdefault(info.idx, {})
        for port in ports:
            count = refs.get(port, 0) + sign
            if count > 0:
                refs[port] = count
                info.host_ports.add(port)
            else:
                refs.pop(port, None)
                info.host_ports.discard(port)

    def charge_of(self, task: Resource, node_name: str | None = None) -> Charge | None:
        """What ``task`` holds on its node, or None when it holds nothing: it is not on a
        node this state knows, it has ended, or it still waits for the scheduler (new,
        pending). ``node_name`` stands for a placement not yet visible in the task: the
        task is charged to that node as ``place`` charged it."""
        spec = task.spec
        state_rank = _RANK.get(task.status.get("state") or ts.NEW, 0)
        if node_name is None:
            if state_rank <= _PENDING_RANK:
                return None
            node_name = spec.get("nodeName")
            if not node_name:
                return None
        info = self.by_name.get(str(node_name))
        if info is None or state_rank > _RUNNING_RANK:
            return None
        name = ts.service_name(task)
        if name is None:
            return None
        svc = (task.metadata.namespace or "default", name)
        demand = self._demand(svc, ts.generation_of(task), task)
        active = _RANK.get(spec.get("desiredState") or ts.RUNNING,
                           _RUNNING_RANK) <= _RUNNING_RANK
        return Charge(info.idx, svc, demand.nano_cpus, demand.memory, demand.host_ports,
                      active)

    def apply(self, charge: Charge, sign: int = 1) -> None:
        """Add (``sign`` 1) or remove (-1) a task's charge on its node."""
        info = self.nodes[charge.node]
        old = info.active
        self._book(info, charge, sign)
        if info.active != old:
            self._reorder(info, old)
        self._version += 1

    def _book(self, info: flt.NodeInfo, charge: Charge, sign: int) -> None:
        """The books of one node and service, without the node ordering (which a state
        being built sorts once at the end)."""
        info.cpu_free -= sign * charge.nano_cpus
        info.mem_free -= sign * charge.memory
        if charge.host_ports:
            self._hold_ports(info, charge.host_ports, sign)
        if charge.active:
            info.active = max(info.active + sign, 0)
            counts = self.service_tasks.setdefault(charge.service, {})
            left = counts.get(info.idx, 0) + sign
            if left > 0:
                counts[info.idx] = left
            else:
                counts.pop(info.idx, None)

    def count_failure(self, service: flt.ServiceKey, generation: int, node: int,
                      sign: int = 1) -> None:
        """Note (``sign`` 1) or, once it is older than ``FAILURE_WINDOW``, forget (-1) one
        failed task of a service generation on node index ``node``."""
        per_node = self.failures.setdefault((service, generation), {})
        left = per_node.get(node, 0) + sign
        if left > 0:
            per_node[node] = left
        else:
            per_node.pop(node, None)
            if not per_node:
                del self.failures[(service, generation)]
        self._version += 1

    def update_node(self, node: Resource) -> bool:
        """Take a changed node (state, availability, labels, resources) in place; False
        if the state does not know it (a new node: build a fresh state instead)."""
        info = self.by_name.get(node.metadata.name)
        if info is None:
            return False
        fresh = flt.NodeInfo.of(node, info.idx)
        info.cpu_free += fresh.cpu_capacity - info.cpu_capacity
        info.mem_free += fresh.mem_capacity - info.mem_capacity
        info.cpu_capacity, info.mem_capacity = fresh.cpu_capacity, fresh.mem_capacity
        info.facts, info.state, info.availability = fresh.facts, fresh.state, fresh.availability
        # Filters and spread trees read node facts: every cached verdict may be stale.
        self._static.clear()
        self._shapes.clear()
        self._explained.clear()
        self._version += 1
        return True

    def set_service(self, service: Resource) -> None:
        """Add or replace a service; what its tasks demand is worked out afresh."""
        key = (ts.namespace_of(service), service.metadata.name)
        self.services[key] = service
        self._forget_demands(key)

    def drop_service(self, key: flt.ServiceKey) -> None:
        self.services.pop(key, None)
        self._forget_demands(key)

    def _forget_demands(self, key: flt.ServiceKey) -> None:
        for cached in [k for k in self._demands if k[0] == key]:
            del self._demands[cached]
        self._explained.clear()
        self._version += 1

    # -- placing --------------------------------------------------------------------------

    def place(self, pending: Iterable[Resource]) -> ScheduleResult:
        """Assign what fits; explain the rest. Tasks not desired running are skipped, and
        tasks that already name a node (global tasks) are only checked against it."""
        result = ScheduleResult({}, {})
        groups: dict[tuple[flt.ServiceKey, int], list[Resource]] = {}
        pinned: list[Resource] = []
        for task in pending:
            if not ts.is_active_desired(task):
                continue
            name = ts.service_name(task)
            if name is None:
                result.unplaced[ts.task_key(task)] = (
                    f"task names no service (label {ts.SERVICE_LABEL} or spec.serviceName)")
                continue
            svc = (ts.namespace_of(task), name)
            if svc not in self.services:
                result.unplaced[ts.task_key(task)] = f"service {svc[0]}/{svc[1]} not found"
                continue
            if ts.node_name_of(task):
                pinned.append(task)
            else:
                groups.setdefault((svc, ts.generation_of(task)), []).append(task)
        # Pinned tasks first: they have exactly one possible node, so they claim it before
        # free-floating tasks, which have others, take its resources.
        for task in sorted(pinned, key=ts.task_key):
            self._place_pinned(task, result)
        for key in sorted(groups):
            tasks = sorted(groups[key], key=lambda t: (ts.slot_of(t), t.metadata.name))
            self._place_group(key[0], key[1], tasks, result)
        return result

    def _charge(self, info: flt.NodeInfo, demand: flt.Demand) -> None:
        info.active += 1
        info.cpu_free -= demand.nano_cpus
        info.mem_free -= demand.memory
        if demand.host_ports:
            self._hold_ports(info, demand.host_ports, 1)

    def _reorder(self, info: flt.NodeInfo, old_active: int) -> None:
        n = len(self.nodes)
        order = self._order
        del order[bisect.bisect_left(order, old_active * n + info.idx)]
        bisect.insort(order, info.active * n + info.idx)

    def _place_pinned(self, task: Resource, result: ScheduleResult) -> None:
        key = ts.task_key(task)
        svc = (ts.namespace_of(task), ts.service_name(task) or "")
        demand = self._demand(svc, ts.generation_of(task), task)
        if demand.error:
            result.unplaced[key] = f"invalid service spec: {demand.error}"
            return
        node_name = ts.node_name_of(task) or ""
        info = self.by_name.get(node_name)
        if info is None:
            result.unplaced[key] = f"node {node_name} not found"
            return
        counts = self.service_tasks.setdefault(svc, {})
        reason = flt.why_not(info, demand, counts.get(info.idx, 0))
        if reason is not None:
            result.unplaced[key] = f"node {node_name} unsuitable ({reason})"
            return
        old = info.active
        self._charge(info, demand)
        counts[info.idx] = counts.get(info.idx, 0) + 1
        self._reorder(info, old)
        self._version += 1
        result.assignments[key] = info.name

    def _place_group(self, svc: flt.ServiceKey, gen: int, tasks: list[Resource],
                     result: ScheduleResult) -> None:
        demand = self._demand(svc, gen, tasks[0])
        if demand.error:
            for task in tasks:
                result.unplaced[ts.task_key(task)] = f"invalid service spec: {demand.error}"
            return
        shape = self._shape(demand)
        parent, children, leaf_of = shape.parent, shape.children, shape.leaf_of
        # Branches holding equally many tasks of the service are taken in label order,
        # rotated by a hash of the service: deterministic, yet the odd task of a group
        # (7 replicas over 3 zones) does not land in the same zone for every service.
        turn = nodefacts.spread_turn(*svc)
        rank = [(r + turn) % k for r, k in zip(shape.rank, shape.siblings, strict=True)]
        nodes = self.nodes
        n = len(nodes)
        order = self._order  # not modified until the group is done (see the end)
        counts = self.service_tasks.setdefault(svc, {})
        recent = self.failures.get((svc, gen), {})
        bad = {idx: c for idx, c in recent.items() if c >= MAX_FAILURES}
        cpu, mem, ports, max_replicas = (demand.nano_cpus, demand.memory,
                                         frozenset(demand.host_ports), demand.max_replicas)

        # Per-group tree state: tasks of the service under each tree node, exhausted tree
        # nodes, and one heap per tree node (children by count; leaf: nodes by ordering).
        size = len(parent)
        count = [0] * size
        full = [False] * size
        heaps: list[list[tuple[int, int, int, int]]] = [[] for _ in range(size)]
        for idx in sorted(counts.keys() | bad.keys()):
            leaf = leaf_of[idx]
            if leaf < 0:
                continue
            c = counts.get(idx, 0)
            heaps[leaf].append((bad.get(idx, 0), c, nodes[idx].active, idx))
            t = leaf
            while t >= 0:
                count[t] += c
                t = parent[t]
        for t in range(size):
            kids = children[t]
            if kids:
                heaps[t] = [(count[c], rank[c], c, 0) for c in kids]
            heapq.heapify(heaps[t])
        stream = [0] * size  # per leaf: how far into ``order`` it has read
        before: dict[int, int] = {}  # node index -> tasks overall when the group started

        heappop, heappush = heapq.heappop, heapq.heappush
        assignments = result.assignments
        placed = 0
        for task in tasks:
            chosen = -1
            while not full[0]:
                # Walk down to the branch with the fewest tasks of the service.
                t = 0
                while children[t]:
                    h = heaps[t]
                    while h and (full[h[0][2]] or h[0][0] != count[h[0][2]]):
                        heappop(h)  # stale count, or a branch with no room left
                    if not h:
                        full[t] = True
                        break
                    t = h[0][2]
                if full[t]:
                    continue
                # A leaf: best node that already runs the service, from its heap...
                h = heaps[t]
                best: tuple[int, int, int, int] | None = None
                while h:
                    entry = h[0]
                    idx = entry[3]
                    info = nodes[idx]
                    if entry[1] != counts.get(idx, 0) or entry[2] != info.active:
                        heappop(h)  # superseded by a fresher entry for the same node
                        continue
                    if ((cpu and info.cpu_free < cpu) or (mem and info.mem_free < mem)
                            or (ports and not ports.isdisjoint(info.host_ports))
                            or (max_replicas and entry[1] >= max_replicas)):
                        heappop(h)  # cannot fit now, so cannot for the rest of the group
                        continue
                    best = entry
                    break
                # ...against the best node that runs none of it, from the shared stream.
                p = stream[t]
                fresh = -1
                while p < n:
                    idx = order[p] % n
                    if leaf_of[idx] == t and idx not in counts and idx not in bad:
                        info = nodes[idx]
                        if not ((cpu and info.cpu_free < cpu) or (mem and info.mem_free < mem)
                                or (ports and not ports.isdisjoint(info.host_ports))):
                            fresh = idx
                            break
                    p += 1
                stream[t] = p
                if best is not None and (fresh < 0 or best < (0, 0, nodes[fresh].active, fresh)):
                    chosen = best[3]
                elif fresh >= 0:
                    chosen = fresh
                else:
                    full[t] = True
                    continue
                break
            if chosen < 0:
                break

            info = nodes[chosen]
            if chosen not in before:
                before[chosen] = info.active
            info.active += 1
            info.cpu_free -= cpu
            info.mem_free -= mem
            if ports:
                self._hold_ports(info, demand.host_ports, 1)
            c = counts.get(chosen, 0) + 1
            counts[chosen] = c
            leaf = leaf_of[chosen]
            heappush(heaps[leaf], (bad.get(chosen, 0), c, info.active, chosen))
            t = leaf
            while t >= 0:
                count[t] += 1
                up = parent[t]
                if up >= 0:
                    heappush(heaps[up], (count[t], rank[t], t, 0))
                t = up
            assignments[ts.task_key(task)] = info.name
            placed += 1

        if placed:
            self._version += 1
        for idx, old in before.items():
            self._reorder(nodes[idx], old)
        if placed < len(tasks):
            reason = self._explain(demand)
            for task in tasks[placed:]:
                result.unplaced[ts.task_key(task)] = reason

    def _explain(self, demand: flt.Demand) -> str:
        # Groups that fail back to back against an unchanged cluster (a full cluster, or
        # many services with the same impossible constraint) share one explanation.
        key = (self._version, demand.signature,
               demand.service if demand.max_replicas else None)
        text = self._explained.get(key)
        if text is None:
            counts = self.service_tasks.get(demand.service, {})
            text = self._explained[key] = flt.explain(
                self.nodes, demand, lambda info: counts.get(info.idx, 0))
        return text


def schedule(tasks_pending: Iterable[Resource], nodes: Iterable[Resource],
             tasks_on_nodes: Iterable[Resource],
             services: Iterable[Resource] | Mapping[Any, Resource], *,
             now: float | None = None) -> ScheduleResult:
    """Place one batch of pending tasks.

    ``tasks_on_nodes``: tasks already bound to a node, in any state (live ones hold
    resources and count for spreading; recent failures steer placement when ``now``, in
    epoch seconds, is given). A pending task listed there too is not counted twice.
    ``services``: the services the tasks belong to (a list or any mapping of them).
    Returns assignments (task key ``namespace/name`` -> node name) and, for every task
    left pending, why.
    """
    pending = list(tasks_pending)
    state = ClusterState(nodes, tasks_on_nodes, services, now=now,
                         exclude={ts.task_key(t) for t in pending if ts.node_name_of(t)})
    return state.place(pending)
