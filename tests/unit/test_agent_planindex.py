"""The incremental plan (shoal.agent.planindex) against the full one (netplan.plan).

Property: after any sequence of task, service, network and node events (and of the local
hooks' pid and leaving changes), with steps taken at any points in between, both the
index's applied state and what its deltas add up to equal ``netplan.plan`` of the final
objects. Pure: no kernel, no etcd.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shoal.agent import netplan
from shoal.agent.planindex import Delta, PlanIndex, differences
from shoal.crds import resource
from shoal.net.dns import ServiceRecord
from shoal.net.lb import ServiceKey, VirtualService
from shoal.net.overlay import NetworkState, OverlayNetwork, Peer

NODES = ("n1", "n2", "n3")
NETS = {"appnet": ("10.0.1.0/24", 4097, "10.254.0.0/24"),
        "back": ("10.0.2.0/24", 4098, None),
        "ingress": ("10.255.0.0/16", 4096, None)}
SERVICES = ("web", "db", "cache")
TASKS = tuple(f"t{i}" for i in range(8))


def network_obj(name: str, nodes: list[str], internal: bool, allocated: bool
                ) -> resource.Resource:
    subnet, vni, vips = NETS[name]
    net = resource.new("Network", name, spec={"driver": "overlay",
                                              "ingress": name == "ingress",
                                              "internal": internal})
    net.metadata.creationTimestamp = "2026-01-01T00:00:00Z"
    base = ipaddress.IPv4Network(subnet).network_address
    if allocated:
        net.status = {"subnet": subnet, "gateway": str(base + 1), "vni": vni,
                      "nodeAddresses": {n: str(base + 2 + NODES.index(n)) for n in nodes}}
        if vips:
            net.status["vipRange"] = vips
    return net


def node_obj(name: str, address: int | None) -> resource.Resource:
    n = resource.new("Node", name)
    n.status = {"state": "ready"}
    if address is not None:
        n.status["address"] = f"198.18.0.{address}"
    return n


def service_obj(name: str, networks: list[str], vip_nets: list[str],
                ports: list[tuple[str, int, int]], dnsrr: bool, alias: bool
                ) -> resource.Resource:
    nets: list[Any] = [{"target": n, "aliases": [f"{name}-a"]} if alias else n
                       for n in networks]
    index = SERVICES.index(name)
    vips = [{"network": n, "address": f"10.254.0.{10 + index}" if n == "appnet"
             else f"10.0.2.{200 + index}"} for n in vip_nets]
    raw_ports = [{"protocol": "tcp", "target": 80, "published": published, "mode": mode}
                 for mode, published, _ in ports]
    s = resource.new("Service", name, "default",
                     {"networks": nets, "endpoint": {"mode": "dnsrr" if dnsrr else "vip",
                                                     "ports": raw_ports}})
    s.status = {"endpoint": {"mode": "dnsrr" if dnsrr else "vip", "virtualIPs": vips,
                             "ports": raw_ports}}
    return s


def task_obj(name: str, service: str, node: str, networks: list[str], state: str,
             desired: str) -> resource.Resource:
    index = TASKS.index(name)
    addrs = {n: f"{ipaddress.IPv4Network(NETS[n][0]).network_address + 20 + index!s}/"
                f"{ipaddress.IPv4Network(NETS[n][0]).prefixlen}" for n in networks}
    t = resource.new("Task", name, "default",
                     {"serviceName": service, "nodeName": node, "desiredState": desired,
                      "networks": [{"name": n, "addresses": [a]} for n, a in addrs.items()]},
                     labels={"shoal.io/service": service})
    t.metadata.uid = f"uid-{name}"
    t.status = {"state": state}
    return t


def put_task(index: PlanIndex, task: resource.Resource) -> None:
    index.put_task(("default", task.name), netplan.task_entry(task))


net_names = st.sampled_from(sorted(NETS))
events = st.one_of(
    st.tuples(st.just("network"), net_names,
              st.one_of(st.none(), st.tuples(
                  st.lists(st.sampled_from(NODES), unique=True), st.booleans(),
                  st.booleans()))),
    st.tuples(st.just("node"), st.sampled_from(NODES),
              st.one_of(st.none(), st.tuples(st.sampled_from([None, 1, 2, 3, 9])))),
    st.tuples(st.just("service"), st.sampled_from(SERVICES),
              st.one_of(st.none(), st.tuples(
                  st.lists(st.sampled_from(["appnet", "back"]), unique=True),
                  st.lists(st.sampled_from(["appnet", "back", "ingress"]), unique=True),
                  st.lists(st.tuples(st.sampled_from(["ingress", "host"]),
                                     st.sampled_from([8080, 8081]), st.just(0)),
                           max_size=2),
                  st.booleans(), st.booleans()))),
    st.tuples(st.just("task"), st.sampled_from(TASKS),
              st.one_of(st.none(), st.tuples(
                  st.sampled_from(SERVICES), st.sampled_from(NODES),
                  st.lists(net_names, unique=True),
                  st.sampled_from(["running", "starting", "failed", "shutdown"]),
                  st.sampled_from(["running", "shutdown"])))),
    st.tuples(st.just("pid"), st.sampled_from(TASKS), st.one_of(st.none(),
                                                                st.integers(100, 102))),
    st.tuples(st.just("leave"), st.sampled_from(TASKS), st.booleans()),
    st.tuples(st.just("step"), st.just(None), st.just(None)),
)


@dataclasses.dataclass
class Applied:
    """What the deltas add up to, as a kernel would hold it."""

    networks: dict[str, OverlayNetwork] = dataclasses.field(default_factory=dict)
    peers: dict[str, set[Peer]] = dataclasses.field(default_factory=dict)
    services: dict[ServiceKey, VirtualService] = dataclasses.field(default_factory=dict)
    records: dict[tuple[str, str], ServiceRecord] = dataclasses.field(default_factory=dict)
    listeners: dict[str, ipaddress.IPv4Address] = dataclasses.field(default_factory=dict)
    clients: dict[Any, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def apply(self, delta: Delta) -> None:
        for change in delta.networks:
            name = (change.new or change.old).name  # type: ignore[union-attr]
            if change.new is None:
                self.networks.pop(name, None)
                self.peers.pop(name, None)
            elif change.full:
                self.networks[name] = dataclasses.replace(change.new, peers=())
                self.peers[name] = set(change.new.peers)
            else:
                assert change.old is not None and name in self.networks
                self.networks[name] = dataclasses.replace(change.new, peers=())
                self.peers[name] |= set(change.added)
                self.peers[name] -= set(change.removed)
        for key in delta.removed_services:
            del self.services[key]
        for svc in delta.services:
            self.services[svc.key] = svc
        for rkey in delta.removed_records:
            del self.records[rkey]
        for record in delta.records:
            self.records[(record.namespace, record.name)] = record
        if delta.listeners is not None:
            self.listeners = delta.listeners
        if delta.clients is not None:
            self.clients = delta.clients

    def plan(self, problems: tuple[str, ...]) -> netplan.Plan:
        nets = tuple(dataclasses.replace(n, peers=tuple(sorted(
            self.peers[n.name], key=lambda p: (int(p.address), int(p.underlay)))))
            for _, n in sorted(self.networks.items()))
        return netplan.Plan(NetworkState(nets),
                            tuple(sorted(self.services.values(), key=netplan.service_order)),
                            tuple(r for _, r in sorted(self.records.items())),
                            self.listeners, problems, self.clients)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=60))
# Pinned: a task gone and back under another service once the index has settled. The
# derandomized search depends on this function's source, and one version of it missed
# a planted "new task does not dirty its service" bug in 1,000 examples.
@example([("step", None, None), ("task", "t1", None), ("step", None, None),
          ("task", "t1", ("web", "n2", ["appnet"], "running", "running"))])
def test_incremental_state_equals_the_full_plan(evs: list[tuple[str, Any, Any]]) -> None:
    # A populated cluster to start from, so most events change something planned.
    evs = [*(("network", n, (list(NODES), False, True)) for n in NETS),
           *(("node", n, (i,)) for i, n in enumerate(NODES, 1)),
           ("service", "web", (["appnet"], ["appnet", "ingress"],
                               [("ingress", 8080, 0)], False, True)),
           ("service", "db", (["appnet", "back"], ["appnet", "back"], [], False, False)),
           ("service", "cache", (["back"], [], [("host", 8081, 0)], True, False)),
           *(("task", t, (SERVICES[i % 3], NODES[i % 3],
                          ["appnet", "ingress"] if i % 3 == 0 else ["appnet", "back"],
                          "running", "running")) for i, t in enumerate(TASKS)),
           ("pid", "t0", 100), ("pid", "t3", 101), *evs]
    index = PlanIndex("n1")
    applied = Applied()
    objects: dict[str, dict[str, resource.Resource]] = {
        "network": {}, "node": {}, "service": {}, "task": {}}
    pids: dict[str, int] = {}
    leaving: set[str] = set()
    for kind, name, args in evs:
        if kind == "step":
            applied.apply(index.step(pids, leaving))
            continue
        if kind == "pid":
            if args is None:
                pids.pop(f"uid-{name}", None)
            else:
                pids[f"uid-{name}"] = args
            continue
        if kind == "leave":
            (leaving.add if args else leaving.discard)(f"uid-{name}")
            continue
        obj: resource.Resource | None = None
        if args is not None:
            if kind == "network":
                obj = network_obj(name, *args)
            elif kind == "node":
                obj = node_obj(name, *args)
            elif kind == "service":
                obj = service_obj(name, *args)
            else:
                obj = task_obj(name, *args)
        if obj is None:
            objects[kind].pop(name, None)
        else:
            objects[kind][name] = obj
        key = (None, name) if kind in ("network", "node") else ("default", name)
        if kind == "task":
            index.put_task(key, netplan.task_entry(obj) if obj is not None else None)
            continue
        put = {"network": index.put_network, "node": index.put_node,
               "service": index.put_service}[kind]
        put(key, obj)
    applied.apply(index.step(pids, leaving))
    full = netplan.plan("n1", objects["network"].values(), objects["service"].values(),
                        objects["task"].values(), objects["node"].values(), pids,
                        frozenset(leaving))
    assert differences(index.snapshot(), full) == []
    assert differences(applied.plan(index.problems()), full) == []
    # A step with nothing changed has nothing to apply.
    assert not index.step(pids, leaving)


def test_one_task_change_touches_only_its_service_and_its_peers() -> None:
    index = PlanIndex("n1")
    for name in ("appnet", "ingress"):
        index.put_network((None, name), network_obj(name, list(NODES), False, True))
    for i, n in enumerate(NODES, 1):
        index.put_node((None, n), node_obj(n, i))
    for s in SERVICES:
        index.put_service(("default", s), service_obj(s, ["appnet"], ["appnet"], [], False,
                                                      False))
    put_task(index, task_obj("t0", "web", "n1", ["appnet"], "running", "running"))
    for i, s in enumerate(SERVICES, 1):
        put_task(index, task_obj(f"t{i}", s, "n2", ["appnet"], "running", "running"))
    index.step({"uid-t0": 100}, ())
    # t2 (db, on n2) stops serving: db's VIP loses it, nothing else changes.
    put_task(index, task_obj("t2", "db", "n2", ["appnet"], "running", "shutdown"))
    delta = index.step({"uid-t0": 100}, ())
    assert delta.touched == {("default", "db")}
    assert {str(s.vip) for s in delta.services} == {"10.254.0.11"}
    assert [(r.name, r.tasks) for r in delta.records] == [("db", {"appnet": ()})]
    # Its address stays a peer (the task still runs there) until it has ended.
    assert [c.added + c.removed for c in delta.networks] in ([], [()])
    put_task(index, task_obj("t2", "db", "n2", ["appnet"], "shutdown", "shutdown"))
    delta = index.step({"uid-t0": 100}, ())
    (change,) = delta.networks
    assert not change.full and change.added == () and [
        str(p.address) for p in change.removed] == ["10.0.1.22"]
    assert not delta.services and not delta.records
