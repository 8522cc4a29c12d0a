"""The allocator's decisions (``controllers/allocator/allocations.py``) without etcd:
networks, service VIPs and ports, task addresses all or nothing, waiting and waking,
releases, and the rebuild that gives a collision to the older holder."""

from __future__ import annotations

import ipaddress
from typing import Any

from shoal.controllers.allocator import allocations, ipam
from shoal.crds import conditions, resource
from shoal.crds import networking as nw
from shoal.crds.resource import Resource

CONFIG = ipam.PoolConfig()


def network(name: str, **spec: Any) -> Resource:
    return resource.new("Network", name, spec={"driver": "overlay", **spec})


def service(name: str, **spec: Any) -> Resource:
    return resource.new("Service", name, "default",
                        {"template": {"image": "busybox"}, **spec})


def task(name: str, svc: str, node: str | None = None, uid: str | None = None,
         state: str = "pending", desired: str = "running") -> Resource:
    obj = resource.new("Task", name, "default",
                       {"serviceName": svc, "slot": 1, "desiredState": desired,
                        "template": {"image": "busybox"}},
                       labels={"shoal.io/service": svc})
    obj.metadata.uid = uid or f"uid-{name}"
    if node is not None:
        obj.spec["nodeName"] = node
    obj.status = {"state": state}
    return obj


def applied(obj: Resource, mutation: allocations.Mutation | None) -> Resource:
    assert mutation is not None, "a decision was expected"
    out = obj.deepcopy()
    mutation(out)
    return out


def decide_task(books: allocations.Allocations, t: Resource, svc: Resource | None,
                ingress: str | None = None) -> allocations.Mutation | None:
    return books.task(("default", t.name), t, lambda _ns, _n: svc,
                      lambda s: nw.task_network_names(s, ingress or nw.INGRESS_NETWORK))


def test_a_network_is_allocated_once_and_its_status_says_so() -> None:
    books = allocations.Allocations(CONFIG)
    app = network("appnet")
    assert books.network(app) is True  # new: whoever waited may be served now
    assert books.network(app) is False
    written = applied(app, books.network_status(app))
    status = written.status
    assert ipaddress.IPv4Network(status["subnet"]).subnet_of(ipaddress.IPv4Network(CONFIG.pool))
    assert status["vni"] >= 4096 and "vipRange" in status
    assert (conditions.get_condition(written, nw.ALLOCATED) or {})["status"] == "True"
    assert books.network_status(written) is None  # already says it: nothing to write


def test_a_network_that_cannot_be_allocated_says_why() -> None:
    books = allocations.Allocations(CONFIG)
    assert books.network(network("a", subnet="10.9.0.0/24")) is True
    clash = network("b", subnet="10.9.0.0/24")
    assert books.network(clash) is False
    out = applied(clash, books.network_status(clash))
    cond = conditions.get_condition(out, nw.ALLOCATED) or {}
    assert cond["status"] == "False" and "subnet" not in out.status
    assert [n.event for n in books.take_notes()][-1] == "network cannot be allocated"


def test_a_service_gets_vips_and_ports_and_waits_for_missing_networks() -> None:
    books = allocations.Allocations(CONFIG)
    books.network(network("appnet"))
    web = service("web", networks=["appnet", "later"],
                  endpoint={"ports": [{"target": 80, "published": 8080}]})
    exists = {"appnet"}.__contains__
    out = applied(web, books.service(web, None, exists))
    ep = nw.endpoint(out)
    assert list(ep.vips) == ["appnet"] and [p.published for p in ep.ports] == [8080]
    cond = conditions.get_condition(out, nw.ALLOCATED) or {}
    assert cond["status"] == "False" and "network later not found" in cond["message"]
    assert ("default", "web") in books.blocked
    # The network appears: the blocked service is queued to be looked at again.
    assert books.network(network("later")) is True
    assert ("default", "web") in books.again_services and not books.blocked


def test_dnsrr_services_get_no_vip_and_releases_free_ports() -> None:
    books = allocations.Allocations(CONFIG)
    books.network(network("appnet"))
    db = service("db", networks=["appnet"], endpoint={"mode": "dnsrr"})
    ep = nw.endpoint(applied(db, books.service(db, None, lambda _n: True)))
    assert ep.vips == {}
    web = service("web", endpoint={"ports": [{"target": 80, "published": 8080}]})
    books.service(web, None, lambda _n: True)
    assert books.ipam.port_holder("tcp", 8080) == "default/web"
    books.release_service(("default", "web"))
    assert books.ipam.port_holder("tcp", 8080) is None


def test_a_task_is_allocated_all_or_nothing_and_its_node_gets_an_address() -> None:
    books = allocations.Allocations(CONFIG)
    books.network(network("a"))
    books.network(network("b"))
    svc = service("web", networks=["a", "b"])
    t = task("web.1", "web", node="n1")
    out = applied(t, decide_task(books, t, svc))
    assert [a.network for a in nw.task_attachments(out) or []] == ["a", "b"]
    assert books.ipam.address_of("a", "node", "n1") is not None
    assert decide_task(books, out, svc) is None  # allocated already


def test_a_task_waits_for_its_networks_and_is_woken_when_they_come() -> None:
    books = allocations.Allocations(CONFIG)
    svc = service("web", networks=["a"])
    t = task("web.1", "web")
    assert decide_task(books, t, svc) is None
    assert ("default", "web.1") in books.waiting
    books.network(network("a"))
    assert ("default", "web.1") in books.again_tasks


def test_a_task_whose_network_is_missing_or_unallocatable_says_so_until_it_comes() -> None:
    books = allocations.Allocations(CONFIG)
    svc = service("web", networks=["gone"])
    t = task("web.1", "web")
    stored: set[str] = set()

    def decide(obj: Resource) -> allocations.Mutation | None:
        return books.task(("default", obj.name), obj, lambda _ns, _n: svc,
                          lambda s: nw.task_network_names(s, nw.INGRESS_NETWORK),
                          lambda name: name in stored)

    marked = applied(t, decide(t))
    cond = conditions.get_condition(marked, nw.ALLOCATED) or {}
    assert (cond["status"], cond["message"]) == ("False", "network gone not found")
    assert decide(marked) is None  # says it already: nothing to write
    # Stored but not allocated yet (created in the same apply): no write.
    stored.add("gone")
    assert decide(task("web.2", "web")) is None
    # Stored but it cannot be allocated: why, on the task.
    books.network(network("x", subnet="10.9.0.0/24"))
    books.network(network("gone", subnet="10.9.0.0/25"))
    why = conditions.get_condition(applied(marked, decide(marked)), nw.ALLOCATED) or {}
    assert why["message"].startswith("network gone is not allocated: subnet 10.9.0.0/25")
    # It comes: allocated, and the condition turns true.
    books.network_problems.clear()
    books.ipam.release_network("x")
    assert books.network(network("gone", subnet="10.9.0.0/25")) is True
    done = applied(marked, decide(marked))
    assert nw.task_attachments(done) and conditions.is_true(done, nw.ALLOCATED)


def test_ended_and_stopping_tasks_are_released_or_left_alone() -> None:
    books = allocations.Allocations(CONFIG)
    books.network(network("a"))
    svc = service("web", networks=["a"])
    t = applied(task("web.1", "web"), decide_task(books, task("web.1", "web"), svc))
    assert books.ipam.address_of("a", "task", t.metadata.uid) is not None
    t.status["state"] = "complete"
    assert decide_task(books, t, svc) is None
    assert books.ipam.address_of("a", "task", t.metadata.uid) is None
    stopping = task("web.2", "web", desired="shutdown")
    assert decide_task(books, stopping, svc) is None
    assert books.ipam.address_of("a", "task", stopping.metadata.uid) is None


def test_an_exhausted_network_marks_the_task_once() -> None:
    books = allocations.Allocations(CONFIG)
    books.network(network("tiny", subnet="10.8.0.0/30"))  # one usable address
    svc = service("web", networks=["tiny"], endpoint={"mode": "dnsrr"})
    first = task("web.1", "web")
    assert decide_task(books, first, svc) is not None
    second = task("web.2", "web")
    failed = applied(second, decide_task(books, second, svc))
    assert (conditions.get_condition(failed, nw.ALLOCATED) or {})["status"] == "False"
    assert decide_task(books, failed, svc) is None  # same message: nothing new to write
    books.release_task(first.metadata.uid)
    assert ("default", "web.2") in books.again_tasks


def test_mesh_nodes_get_ingress_addresses_while_a_port_is_published() -> None:
    books = allocations.Allocations(CONFIG)
    books.network(network("ingress", ingress=True))
    books.mesh_nodes("ingress", lambda: ["n1", "n2"])
    assert books.ipam.holders("ingress", "node") == {}  # nothing published yet
    web = service("web", endpoint={"ports": [{"target": 80}]})
    books.service(web, "ingress", lambda _n: True)
    books.mesh_nodes("ingress", lambda: ["n1", "n2"])
    assert set(books.ipam.holders("ingress", "node")) == {"n1", "n2"}
    books.release_node("n2")
    assert set(books.ipam.holders("ingress", "node")) == {"n1"}


def test_rebuild_adopts_what_objects_hold_and_the_older_holder_wins() -> None:
    first = allocations.Allocations(CONFIG)
    net = network("a")
    first.network(net)
    net = applied(net, first.network_status(net))
    svc = service("web", networks=["a"], endpoint={"mode": "dnsrr"})
    older = applied(task("web.1", "web"), decide_task(first, task("web.1", "web"), svc))
    older.metadata.resourceVersion = "10"
    newer = older.deepcopy()  # the same address written to a second task by a race
    newer.metadata.name, newer.metadata.uid, newer.metadata.resourceVersion = (
        "web.2", "uid-web.2", "11")
    books = allocations.Allocations(CONFIG)
    assert books.rebuild([net], [svc], [newer, older]) == 0
    address = nw.task_attachments(older)[0].address.ip  # type: ignore[index]
    assert books.ipam.holders("a", "task") == {"uid-web.1": address}
    notes = books.take_notes()
    assert [(n.level, n.key) for n in notes] == [("error", newer.ref)]
