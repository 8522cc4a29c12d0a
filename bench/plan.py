"""Re-planning benchmark: the orchestrator's pass over a 1,000-task service after a node
loss, from task facts (what the orchestrator does) beside reading the tasks themselves
(the baseline, same run, same objects).

    python bench/plan.py [--services 100] [--replicas 1000] [--nodes 1000] [--rounds 3]

The tasks are decoded from JSON the way the informer gets them, interleaved with other
allocations so they lie scattered over the heap as in a controller-manager holding
100,000 tasks; one node is down, so every service has one slot to replace. Measured per
service: the plan (``plan_service`` from the tasks, ``plan_service_facts`` from the
index's facts with one ``NodeView`` for all services) plus the stray-owner scan the
orchestrator runs before it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import orjson

from shoal.controllers.orchestrator import slots
from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.store import codec


def _task_doc(service: str, uid: str, slot: int, node: str) -> dict[str, Any]:
    return {"apiVersion": "shoal.io/v1", "kind": "Task",
            "metadata": {"name": f"{service}.{slot}.1", "namespace": "bench",
                         "uid": f"t-{service}-{slot}",
                         "creationTimestamp": "2026-11-28T07:23:38Z", "generation": 1,
                         "labels": {ts.SERVICE_LABEL: service},
                         "ownerReferences": [{"apiVersion": "shoal.io/v1", "kind": "Service",
                                              "name": service, "uid": uid,
                                              "controller": True}]},
            "spec": {"serviceName": service, "slot": slot, "nodeName": node,
                     "template": {"image": "shoal/busybox",
                                  "command": ["httpd", "-f", "-p", "8080"],
                                  "stopGracePeriod": "10s"},
                     "desiredState": "running", "serviceGeneration": 1},
            "status": {"state": "running", "message": "started",
                       "timestamp": "2026-11-28T07:23:38Z", "containerId": "ab" * 32}}


def _owned_elsewhere(task: resource.Resource, uid: str) -> bool:
    """The orchestrator's stray test as it read the task itself (before task facts)."""
    for ref in task.metadata.ownerReferences:
        if ref.get("kind") == "Service" and ref.get("uid"):
            return str(ref["uid"]) != uid
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--replicas", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rng = random.Random(1)
    nodes = []
    for i in range(args.nodes):
        node = resource.new("Node", f"n{i}")
        node.status, node.spec = {"state": "ready"}, {"availability": "active"}
        nodes.append(node)
    nodes[0].status = {"state": "down"}
    services, tasks, facts, clutter = [], [], [], []
    for s in range(args.services):
        svc = resource.new("Service", f"svc-{s:03d}", "bench",
                           spec={"replicas": args.replicas, "mode": "replicated"})
        svc.metadata.uid, svc.metadata.generation = f"u-{s}", 1
        services.append(svc)
        mine = []
        for slot in range(1, args.replicas + 1):
            node = "n0" if slot == 1 else f"n{rng.randrange(1, args.nodes)}"
            doc = orjson.dumps(_task_doc(svc.name, svc.metadata.uid, slot, node))
            mine.append(codec.decode(doc, 5))
            clutter.append(orjson.loads(doc))  # scatters the tasks over the heap
        tasks.append(mine)
        facts.append([ts.facts_of(t) for t in mine])
    rng.shuffle(clutter)
    now = time.time()

    def from_tasks() -> float:
        started = time.perf_counter()
        for svc, mine in zip(services, tasks, strict=True):
            uid = svc.metadata.uid
            [t for t in mine if _owned_elsewhere(t, uid)]
            plan = slots.plan_service(svc, mine, nodes, now=now)
            assert len(plan.creates) == 1
        return (time.perf_counter() - started) / len(services)

    def from_facts() -> float:
        started = time.perf_counter()
        view = slots.NodeView.of(nodes)
        for svc, known in zip(services, facts, strict=True):
            uid = svc.metadata.uid
            [f.task for f in known if f.owner is not None and f.owner != uid]
            plan = slots.plan_service_facts(svc, known, view, now=now)
            assert len(plan.creates) == 1
        return (time.perf_counter() - started) / len(services)

    base, new = [], []
    for _ in range(args.rounds):
        base.append(from_tasks())
        new.append(from_facts())
    b, n = statistics.median(base), statistics.median(new)
    print(f"re-plan of a {args.replicas:,}-task service among {args.services * args.replicas:,}"
          f" cached tasks, one node down, median of {args.rounds} rounds:")
    print(f"  from the tasks (baseline):      {b * 1000:.2f} ms per service")
    print(f"  from the index's task facts:    {n * 1000:.2f} ms per service "
          f"({b / n:.1f}x; {args.services} services {n * args.services:.2f} s)")


if __name__ == "__main__":
    main()
