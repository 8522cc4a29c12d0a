"""The scheduler loop's books: an incrementally fed ``ClusterState`` must always equal one
built from scratch, whatever the order of placements, echoes, failed commits, agent
progress, shutdowns, deletions, node and service changes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

from shoal.controllers.scheduler import controller as sc
from shoal.controllers.scheduler import placement
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource, new
from shoal.store import client, codec, errors


class FakeInformer:
    """The informer surface the scheduler uses, driven by the test."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str | None, str], Resource] = {}
        self.handlers: list[tuple[Any, Any, Any]] = []
        self.rv = 0

    def add_handlers(self, on_add: Any = None, on_update: Any = None,
                     on_delete: Any = None) -> Callable[[], None]:
        entry = (on_add, on_update, on_delete)
        self.handlers.append(entry)
        if on_add is not None:
            for obj in list(self.objects.values()):
                on_add(obj)
        return lambda: self.handlers.remove(entry)

    def put(self, obj: Resource) -> None:
        self.rv += 1
        obj.metadata.resourceVersion = str(self.rv)
        codec.remember_spec(obj)  # as decoding a watched value does
        key = (obj.metadata.namespace, obj.metadata.name)
        old = self.objects.get(key)
        self.objects[key] = obj
        for on_add, on_update, _ in list(self.handlers):
            if old is None and on_add is not None:
                on_add(obj)
            elif old is not None and on_update is not None:
                on_update(old, obj)

    def remove(self, obj: Resource) -> None:
        old = self.objects.pop((obj.metadata.namespace, obj.metadata.name), None)
        if old is not None:
            for _, _, on_delete in list(self.handlers):
                if on_delete is not None:
                    on_delete(old)

    def get(self, name: str, namespace: str | None = None) -> Resource | None:
        return self.objects.get((namespace, name))

    def list(self) -> list[Resource]:
        return list(self.objects.values())

    def keys(self) -> list[tuple[str | None, str]]:
        return list(self.objects)


class FakeStore:
    """Commits succeed, fail, or succeed with the echo held back, at random."""

    def __init__(self, tasks: FakeInformer, rng: random.Random) -> None:
        self.tasks = tasks
        self.rng = rng
        self.held: list[Resource] = []

    def _write(self, obj: Resource) -> None:
        current = self.tasks.get(obj.metadata.name, obj.metadata.namespace)
        if current is None or current.metadata.resourceVersion != obj.metadata.resourceVersion:
            raise errors.ConflictError(obj.ref)
        fresh = Resource(kind=obj.kind, metadata=obj.metadata.copy(), spec=dict(obj.spec),
                         status=dict(obj.status))
        if self.rng.random() < 0.5:
            self.held.append(fresh)  # the watch delivers it later
        else:
            self.tasks.put(fresh)

    async def commit(self, ops: Sequence[client.Op], share: bool = False,
                     ) -> list[Resource | None]:
        await asyncio.sleep(0)
        if self.rng.random() < 0.1:
            raise errors.ConflictError("batch")
        for op in ops:
            current = self.tasks.get(op.obj.metadata.name, op.obj.metadata.namespace)
            if current is None or (current.metadata.resourceVersion
                                   != op.obj.metadata.resourceVersion):
                raise errors.ConflictError("batch")
        for op in ops:
            self._write(op.obj)
        return [op.obj for op in ops]

    async def update(self, info: Any, obj: Resource) -> Resource:
        await asyncio.sleep(0)
        self._write(obj)
        return obj

    def flush(self) -> None:
        held, self.held = self.held, []
        for obj in held:
            current = self.tasks.get(obj.metadata.name, obj.metadata.namespace)
            if current is not None:
                self.tasks.put(obj)


def make_node(name: str, cpus: float = 4.0, availability: str = "active",
              state: str = "ready") -> Resource:
    n = new("Node", name)
    n.spec = {"availability": availability}
    n.status = {"state": state, "resources": {"cpus": cpus, "memory": "8Gi"}}
    return n


def make_service(name: str, generation: int, cpus: float, port: int | None) -> Resource:
    spec: dict[str, Any] = {"replicas": 1, "template": {
        "image": "x", "resources": {"reservations": {"cpus": cpus, "memory": "64Mi"}}},
        "placement": {"maxReplicasPerNode": 3}}
    if port:
        spec["endpoint"] = {"ports": [{"published": port, "target": 80, "mode": "host"}]}
    svc = new("Service", name, "default", spec=spec)
    svc.metadata.generation = generation
    return svc


def make_task(svc: Resource, seq: int) -> Resource:
    t = new("Task", f"{svc.name}.{seq}.1", "default", labels={ts.SERVICE_LABEL: svc.name})
    t.spec = {"serviceName": svc.name, "slot": seq, "desiredState": "running",
              "serviceGeneration": svc.metadata.generation,
              "template": svc.spec["template"]}
    t.status = {"state": "pending"}
    return t


def books(cluster: placement.ClusterState) -> dict[str, Any]:
    nodes = {n.name: (n.active, n.cpu_free, n.mem_free, sorted(n.host_ports))
             for n in cluster.nodes}
    counts = {svc: {cluster.nodes[i].name: c for i, c in per.items() if c}
              for svc, per in cluster.service_tasks.items()}
    return {"nodes": nodes, "services": {k: v for k, v in counts.items() if v}}


async def test_incremental_books_match_a_fresh_build() -> None:
    rng = random.Random(7)
    tasks, nodes, services = FakeInformer(), FakeInformer(), FakeInformer()
    for i in range(6):
        nodes.put(make_node(f"n{i}"))
    svcs = [make_service(f"s{i}", 1, cpus=0.5, port=8000 + i if i == 0 else None)
            for i in range(3)]
    for svc in svcs:
        services.put(svc)
    store = FakeStore(tasks, rng)
    term = sc._State(store, tasks, nodes, services)  # type: ignore[arg-type]
    term.attach()
    seq = 0
    for step in range(400):
        roll = rng.random()
        if roll < 0.3:
            seq += 1
            tasks.put(make_task(rng.choice(svcs), seq))
        elif roll < 0.45:
            await term.batch()
            await asyncio.gather(*term.commits)
        elif roll < 0.55:
            store.flush()
        elif roll < 0.75 and tasks.objects:
            task = rng.choice(tasks.list())
            state = task.status.get("state")
            if state not in (None, "pending") and not ts.has_ended(task):
                moved = task.deepcopy()
                moved.status["state"] = rng.choice(["running", "running", "failed",
                                                    "complete", "shutdown"])
                moved.status["timestamp"] = "2026-01-01T00:00:00Z"
                tasks.put(moved)
        elif roll < 0.83 and tasks.objects:
            task = rng.choice(tasks.list()).deepcopy()
            task.spec["desiredState"] = "shutdown"
            tasks.put(task)
        elif roll < 0.88 and tasks.objects:
            tasks.remove(rng.choice(tasks.list()))
        elif roll < 0.94:
            node = rng.choice(nodes.list()).deepcopy()
            node.spec["availability"] = rng.choice(["active", "pause", "drain"])
            node.status["resources"]["cpus"] = rng.choice([2.0, 4.0, 8.0])
            nodes.put(node)
        else:
            i = rng.randrange(len(svcs))
            svc = svcs[i]
            svcs[i] = make_service(svc.name, svc.metadata.generation + 1,
                                   cpus=rng.choice([0.25, 0.5, 1.0]),
                                   port=8000 if i == 0 else None)
            services.put(svcs[i])
        if step % 50 == 49:
            store.flush()
            await asyncio.gather(*term.commits)
            live = term.cluster or await term.rebuild()
            fresh = sc._State(store, tasks, nodes, services)  # type: ignore[arg-type]
            expected = await fresh.rebuild()
            assert books(live) == books(expected), f"step {step}"
    assert seq > 50
    placed = [t for t in tasks.list() if ts.node_name_of(t)]
    assert placed, "nothing was ever placed"
    term.detach()


async def test_failed_commit_releases_the_placement() -> None:
    tasks, nodes, services = FakeInformer(), FakeInformer(), FakeInformer()
    nodes.put(make_node("n0", cpus=1.0))
    svc = make_service("s", 1, cpus=1.0, port=None)
    services.put(svc)

    class Refusing(FakeStore):
        async def commit(self, ops: Sequence[client.Op], share: bool = False,
                         ) -> list[Resource | None]:
            raise errors.ConflictError("batch")

        async def update(self, info: Any, obj: Resource) -> Resource:
            raise errors.ConflictError(obj.ref)

    term = sc._State(Refusing(tasks, random.Random(1)), tasks, nodes,  # type: ignore[arg-type]
                    services)
    term.attach()
    tasks.put(make_task(svc, 1))
    await term.batch()
    await asyncio.gather(*term.commits)
    assert term.cluster is not None
    info = term.cluster.nodes[0]
    # The write failed: the whole CPU is free again and the task is pending, not in flight.
    assert info.cpu_free == info.cpu_capacity and info.active == 0
    assert not term.inflight and "default/s.1.1" in term.pending
    term.detach()
