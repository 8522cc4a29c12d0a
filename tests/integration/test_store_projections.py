"""Projections written by the store in the source object's own transaction, on a real etcd:
they appear, follow the object, stay untouched by status writes that change nothing in
them, and go with it -- also in a full 127-object batch."""

from __future__ import annotations

from shoal.crds import kinds, resource
from shoal.store import client, codec, projections

REGISTRY = kinds.Registry.builtin()
TASKS = REGISTRY.lookup("tasks")
SERVICES = REGISTRY.lookup("services")


def task(name: str, node: str | None = None) -> resource.Resource:
    spec: dict[str, object] = {"serviceName": "web", "slot": 1, "desiredState": "running",
                               "template": {"image": "x"},
                               "networks": [{"network": "front", "address": "10.0.1.5/24"}]}
    if node:
        spec["nodeName"] = node
    return resource.new("Task", name, None, spec=spec)


async def keys(store: client.Store, under: str) -> dict[str, int]:
    kvs, _ = await store.raw_list(f"{store.prefix}/{under}".encode())
    return {kv.key.decode()[len(store.prefix) + 1:]: kv.mod_revision for kv in kvs}


async def test_a_task_s_projections_follow_it_in_its_own_transactions(
        store: client.Store) -> None:
    made = await store.create(TASKS, task("web.1"))
    assert await keys(store, "nodes/") == {} and await keys(store, "dataplane/") == {}
    made.spec["nodeName"] = "n1"  # as the scheduler assigns it
    assigned = await store.update(TASKS, made)
    rev = int(assigned.metadata.resourceVersion)
    assert await keys(store, "nodes/") == {"nodes/n1/tasks/default/web.1": rev}
    assert await keys(store, "dataplane/") == {"dataplane/tasks/default/web.1": rev}

    got = await store.get(TASKS, "web.1")
    preparing = await store.update(TASKS, codec.with_status(got, {"state": "preparing"}))
    assert (await keys(store, "nodes/"))["nodes/n1/tasks/default/web.1"] == rev  # untouched
    running = await store.update(TASKS, codec.with_status(preparing, {"state": "running"}))
    dp = await store.raw_get(f"{store.prefix}/dataplane/tasks/default/web.1".encode())
    assert dp is not None and dp.mod_revision == int(running.metadata.resourceVersion)
    assert codec.decode(dp.value, dp.mod_revision).status == {"state": "running"}

    await store.delete(TASKS, "web.1")
    assert await keys(store, "nodes/") == {} and await keys(store, "dataplane/") == {}


async def test_a_full_batch_of_assignments_carries_its_projections(
        store: client.Store) -> None:
    ops = [client.Op("create", TASKS, task(f"web.{i}", node=f"n{i % 3}"))
           for i in range(client.MAX_TXN_OPS - 1)]
    made = await store.commit(ops)
    assert len(await keys(store, "nodes/")) == len(ops)
    assert len(await keys(store, "dataplane/tasks/")) == len(ops)
    await store.commit([client.Op("delete", TASKS, t) for t in made if t is not None])
    assert await keys(store, "nodes/") == {} and await keys(store, "dataplane/") == {}


async def test_a_service_s_dataplane_copy_changes_with_its_endpoint_only(
        store: client.Store) -> None:
    svc = await store.create(SERVICES, resource.new("Service", "web", None, spec={
        "template": {"image": "x"}, "endpoint": {"mode": "vip"}}))
    key = f"{store.prefix}/dataplane/services/default/web".encode()
    first = await store.raw_get(key)
    assert first is not None
    counted = await store.update(SERVICES, codec.with_status(svc, {"replicas": 2}))
    assert (await store.raw_get(key)) == first  # a status write that changes no endpoint
    await store.update(SERVICES, codec.with_status(counted, {
        "replicas": 2, "endpoint": {"vips": {"front": "10.0.1.2"}}}))
    now = await store.raw_get(key)
    assert now is not None and codec.decode(now.value, 1).status["endpoint"] == {
        "vips": {"front": "10.0.1.2"}}
    assert projections.node_prefix(store.prefix, "n1") == f"{store.prefix}/nodes/n1/".encode()
