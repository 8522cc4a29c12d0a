"""The allocator controller against a real etcd: the ingress network by default, network,
task, node, VIP and port allocations persisted in the objects, a restarted allocator that
rebuilds from them without collisions, releases, and bad objects marked, not fatal.

Tasks are written by the test (no orchestrator, no scheduler): the allocator only reads
a task's service, node and state."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

from shoal.controllers.allocator import controller as allocator
from shoal.crds import admission, kinds, resource
from shoal.crds import networking as nw
from shoal.runtime import manager
from shoal.store import client, errors
from tests.helpers import eventually

REG = kinds.Registry.builtin()
NETWORKS = REG.lookup("networks")
SERVICES = REG.lookup("services")
TASKS = REG.lookup("tasks")
NODES = REG.lookup("nodes")


@contextlib.asynccontextmanager
async def running_allocator(store: client.Store) -> AsyncIterator[None]:
    task = asyncio.create_task(manager.run_controllers(
        store, [allocator.controller_spec()], "test-allocator", lease_ttl=2))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def put(store: client.Store, doc: dict[str, Any]) -> resource.Resource:
    obj = admission.admit(doc, REG)
    return await store.create(REG.by_kind(obj.kind), obj)


async def network(store: client.Store, name: str, **spec: Any) -> resource.Resource:
    return await put(store, {"apiVersion": "shoal.io/v1", "kind": "Network",
                             "metadata": {"name": name}, "spec": spec})


async def service(store: client.Store, name: str, **spec: Any) -> resource.Resource:
    return await put(store, {"apiVersion": "shoal.io/v1", "kind": "Service",
                             "metadata": {"name": name, "namespace": "default"},
                             "spec": {"template": {"image": "busybox"}, **spec}})


async def task(store: client.Store, name: str, svc: str, node: str | None = None,
               state: str = "pending") -> resource.Resource:
    obj = resource.new("Task", name, "default",
                       {"serviceName": svc, "slot": 1, "desiredState": "running",
                        "template": {"image": "busybox"}},
                       labels={"shoal.io/service": svc})
    if node is not None:
        obj.spec["nodeName"] = node
    obj.status = {"state": state}
    return await store.create(TASKS, obj)


async def node(store: client.Store, name: str) -> resource.Resource:
    obj = resource.new("Node", name, spec={"availability": "active", "role": "worker"})
    obj.status = {"state": "ready", "address": "198.18.0.9"}
    return await store.create(NODES, obj)


async def get(store: client.Store, info: kinds.KindInfo, name: str,
              namespace: str | None = None) -> resource.Resource | None:
    try:
        return await store.get(info, name, namespace)
    except errors.NotFoundError:
        return None


async def allocated_network(store: client.Store, name: str) -> nw.NetworkInfo:
    async def probe() -> nw.NetworkInfo | None:
        obj = await get(store, NETWORKS, name)
        return nw.network_info(obj) if obj is not None else None
    return await eventually(probe, what=f"network {name} allocated")


async def attachments(store: client.Store, name: str) -> list[nw.Attachment]:
    async def probe() -> list[nw.Attachment] | None:
        obj = await get(store, TASKS, name, "default")
        return nw.task_attachments(obj) if obj is not None else None
    return await eventually(probe, what=f"task {name} allocated")


async def endpoint(store: client.Store, name: str, ready: Any) -> nw.Endpoint:
    async def probe() -> nw.Endpoint | None:
        obj = await get(store, SERVICES, name, "default")
        ep = nw.endpoint(obj) if obj is not None else None
        return ep if ep is not None and ready(ep) else None
    return await eventually(probe, what=f"service {name} endpoint")


async def test_allocations_persist_and_survive_restart(store: client.Store) -> None:
    await node(store, "n1")
    await node(store, "n2")
    await network(store, "appnet")
    await network(store, "fixed", subnet="10.9.0.0/24")
    await service(store, "web", networks=["appnet", "fixed"], replicas=2,
                  endpoint={"ports": [{"target": 80, "published": 8080},
                                      {"target": 53, "protocol": "udp"}]})
    await service(store, "db", networks=["appnet"], endpoint={"mode": "dnsrr"})
    await service(store, "plain")
    await task(store, "web.1", "web", node="n1")
    await task(store, "web.2", "web", node="n2")
    await task(store, "db.1", "db")
    await task(store, "plain.1", "plain", node="n1")

    async with running_allocator(store):
        ingress = await allocated_network(store, "ingress")
        assert str(ingress.subnet) == "10.255.0.0/20" and ingress.vip_range is None
        app = await allocated_network(store, "appnet")
        fixed = await allocated_network(store, "fixed")
        assert str(fixed.subnet) == "10.9.0.0/24" and str(fixed.gateway) == "10.9.0.1"
        assert app.vni != fixed.vni and ingress.vni != app.vni and min(
            app.vni, fixed.vni, ingress.vni) >= 4096
        web1 = await attachments(store, "web.1")
        web2 = await attachments(store, "web.2")
        # The service's networks in its order, ingress last (it publishes ports).
        assert [a.network for a in web1] == ["appnet", "fixed", "ingress"]
        assert all(a.address.ip in (app.subnet if a.network == "appnet" else fixed.subnet
                                    if a.network == "fixed" else ingress.subnet)
                   for a in web1)
        assert not {a.address for a in web1} & {a.address for a in web2}
        assert [a.network for a in await attachments(store, "db.1")] == ["appnet"]
        ep = await endpoint(store, "web", lambda e: len(e.vips) == 2 and len(e.ports) == 2)
        assert ep.vips["appnet"] in (app.vip_range or ipaddress.IPv4Network("0.0.0.0/32"))
        assert [(p.protocol, p.published) for p in ep.ports] == [("tcp", 8080), ("udp", 30000)]
        db = await endpoint(store, "db", lambda e: e.mode == "dnsrr")
        assert db.vips == {}
        # Nodes hosting tasks of a network get their own address on it; every node gets
        # one on ingress (a service publishes an ingress port).
        app = await eventually(lambda: _info_with(store, "appnet", {"n1", "n2"}))
        ingress = await eventually(lambda: _info_with(store, "ingress", {"n1", "n2"}))
        plain = await get(store, TASKS, "plain.1", "default")
        assert plain is not None and "networks" not in plain.spec

    before = {t: await attachments(store, t) for t in ("web.1", "web.2", "db.1")}
    before_ep = await endpoint(store, "web", lambda e: True)
    # A second allocator (a new leader) rebuilds from the objects: nothing moves, and
    # new requests never collide with the old ones.
    async with running_allocator(store):
        await task(store, "web.3", "web", node="n1")
        web3 = await attachments(store, "web.3")
        held = {a.address for t in before.values() for a in t}
        assert not {a.address for a in web3} & held
        for name, atts in before.items():
            assert await attachments(store, name) == atts
        await service(store, "api", endpoint={"ports": [{"target": 80}]})
        api = await endpoint(store, "api", lambda e: len(e.ports) == 1)
        assert api.ports[0].published == 30000  # ports are per protocol: web holds 30000/udp
        assert (await endpoint(store, "web", lambda e: True)) == before_ep


async def _info_with(store: client.Store, name: str, nodes: set[str]) -> nw.NetworkInfo | None:
    obj = await get(store, NETWORKS, name)
    info = nw.network_info(obj) if obj is not None else None
    return info if info is not None and nodes <= set(info.node_addresses) else None


async def test_release_on_end_and_delete(store: client.Store) -> None:
    await network(store, "appnet", subnet="10.7.0.0/29")  # 5 usable hosts (gateway .1)
    await service(store, "web", networks=["appnet"])
    async with running_allocator(store):
        for i in range(4):
            await task(store, f"web.{i}", "web")
        got = [await attachments(store, f"web.{i}") for i in range(4)]
        assert sorted(str(a[0].address.ip) for a in got) == [
            "10.7.0.2", "10.7.0.3", "10.7.0.4", "10.7.0.5"]
        # The subnet has one address left; a fifth and sixth task: one waits, marked.
        await task(store, "web.4", "web")
        await task(store, "web.5", "web")

        async def marked() -> bool:
            objs = [await get(store, TASKS, f"web.{i}", "default") for i in (4, 5)]
            return sum(1 for o in objs if o is not None and nw.task_attachments(o) is None
                       and o.status.get("conditions")) == 1
        await eventually(marked, what="one task marked not allocated")
        # A task that ended and a deleted one free their addresses.
        ended = await get(store, TASKS, "web.0", "default")
        assert ended is not None
        ended.status["state"] = "shutdown"
        await store.update(TASKS, ended)
        await store.delete(TASKS, "web.1", "default")
        await task(store, "web.6", "web")
        assert (await attachments(store, "web.6"))[0].address.ip in {
            ipaddress.IPv4Address("10.7.0.2"), ipaddress.IPv4Address("10.7.0.3"),
            ipaddress.IPv4Address("10.7.0.6")}

        # Deleting a service frees its port for another.
        await service(store, "a", endpoint={"ports": [{"target": 80, "published": 9000}]})
        await endpoint(store, "a", lambda e: len(e.ports) == 1)
        await service(store, "b", endpoint={"ports": [{"target": 80, "published": 9000}]})
        b = await eventually(lambda: _condition(store, "b", "False"))
        assert "9000/tcp is already used by service 'default/a'" in b
        await store.delete(SERVICES, "a", "default")
        await eventually(lambda: _condition(store, "b", "True"))


async def _condition(store: client.Store, name: str, status: str) -> str | None:
    obj = await get(store, SERVICES, name, "default")
    for cond in (obj.status.get("conditions") or []) if obj is not None else []:
        if cond.get("type") == nw.ALLOCATED and cond.get("status") == status:
            return str(cond.get("message"))
    return None


async def test_bad_objects_are_marked_and_ingress_comes_back(store: client.Store) -> None:
    await network(store, "one", subnet="10.8.0.0/24")
    await network(store, "two", subnet="10.8.0.0/25")  # overlaps "one"
    await service(store, "lost", networks=["nowhere"])
    async with running_allocator(store):
        await allocated_network(store, "one")

        async def two_failed() -> str | None:
            obj = await get(store, NETWORKS, "two")
            for cond in (obj.status.get("conditions") or []) if obj is not None else []:
                if cond.get("type") == nw.ALLOCATED and cond.get("status") == "False":
                    return str(cond.get("message"))
            return None
        assert "overlaps 10.8.0.0/24 of network 'one'" in await eventually(two_failed)
        assert "network nowhere not found" in await eventually(
            lambda: _condition(store, "lost", "False"))
        # A garbage spec.networks on a service does not stop the loop.
        bad = await get(store, SERVICES, "lost", "default")
        assert bad is not None
        bad.spec["networks"] = [{"not": "a name"}, 7]
        await store.update(SERVICES, bad)
        await eventually(lambda: _condition(store, "lost", "True"))
        # The ingress network is recreated when deleted.
        first = await allocated_network(store, "ingress")
        await store.delete(NETWORKS, "ingress")

        async def recreated() -> bool:
            obj = await get(store, NETWORKS, "ingress")
            return obj is not None and nw.network_info(obj) is not None
        await eventually(recreated, what="ingress recreated")
        assert str((await allocated_network(store, "ingress")).subnet) == str(first.subnet)
