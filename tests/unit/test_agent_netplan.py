"""The dataplane plan (shoal.agent.netplan) and the allocation fields it reads
(shoal.crds.networking), without a kernel or etcd."""

from __future__ import annotations

import ipaddress
from typing import Any

from shoal.agent import netplan
from shoal.crds import networking as nw
from shoal.crds import resource
from shoal.net.lb import Backend

A = ipaddress.IPv4Address


def network(name: str, subnet: str, vni: int, nodes: dict[str, str], *,
            vip_range: str | None = None, ingress: bool = False,
            internal: bool = False) -> resource.Resource:
    net = resource.new("Network", name, spec={"driver": "overlay", "ingress": ingress,
                                              "internal": internal})
    net.metadata.creationTimestamp = "2026-01-01T00:00:00Z"
    net.status = {"subnet": subnet, "gateway": subnet.replace("0/", "1/").split("/")[0],
                  "vni": vni, "nodeAddresses": nodes}
    if vip_range:
        net.status["vipRange"] = vip_range
    return net


def node(name: str, address: str) -> resource.Resource:
    n = resource.new("Node", name)
    n.status = {"state": "ready", "address": address}
    return n


def task(name: str, service: str, node_name: str, networks: dict[str, str],
         state: str = "running", desired: str = "running") -> resource.Resource:
    t = resource.new("Task", name, "default",
                     {"serviceName": service, "nodeName": node_name, "desiredState": desired,
                      "networks": [{"name": n, "addresses": [a]} for n, a in networks.items()]},
                     labels={"shoal.io/service": service})
    t.metadata.uid = f"uid-{name}"
    t.status = {"state": state}
    return t


def service(name: str, networks: list[Any], endpoint: dict[str, Any] | None = None,
            ports: list[dict[str, Any]] | None = None, mode: str = "vip") -> resource.Resource:
    s = resource.new("Service", name, "default",
                     {"networks": networks, "endpoint": {"mode": mode, "ports": ports or []}})
    s.status = {"endpoint": endpoint or {}}
    return s


NETS = [network("appnet", "10.0.1.0/24", 4097,
                {"n1": "10.0.1.2", "n2": "10.0.1.3", "n3": "10.0.1.4"},
                vip_range="10.254.0.0/24"),
        network("ingress", "10.255.0.0/16", 4096,
                {"n1": "10.255.0.2", "n2": "10.255.0.3", "n3": "10.255.0.4"}, ingress=True)]
NODES = [node("n1", "198.18.0.1"), node("n2", "198.18.0.2"), node("n3", "198.18.0.3")]
WEB = service("web", ["appnet"], ports=[{"target": 80, "published": 8080}],
              endpoint={"mode": "vip",
                        "virtualIPs": [{"network": "appnet", "address": "10.254.0.2"}],
                        "ports": [{"protocol": "tcp", "target": 80, "published": 8080,
                                   "mode": "ingress"}]})


def web_tasks() -> list[resource.Resource]:
    return [task("web.1", "web", "n1", {"appnet": "10.0.1.10/24", "ingress": "10.255.0.10/16"}),
            task("web.2", "web", "n2", {"appnet": "10.0.1.11/24", "ingress": "10.255.0.11/16"}),
            task("web.3", "web", "n3", {"appnet": "10.0.1.12/24", "ingress": "10.255.0.12/16"},
                 state="starting")]


def test_overlay_local_attachments_and_remote_peers() -> None:
    plan = netplan.plan("n1", NETS, [WEB], web_tasks(), NODES, {"uid-web.1": 4242})
    assert [n.name for n in plan.overlay.networks] == ["appnet", "ingress"]
    app = plan.overlay.networks[0]
    assert app.vni == 4097 and app.node_address == A("10.0.1.2")
    assert str(app.vip_range) == "10.254.0.0/24"
    (att,) = app.attachments
    assert (att.key, att.netns, att.ifname, str(att.address), att.default_route) == (
        "uid-web.1", "/proc/4242/ns/net", "eth0", "10.0.1.10/24", True)
    ingress_att = plan.overlay.networks[1].attachments[0]
    assert ingress_att.ifname == "eth1" and not ingress_att.default_route
    # Remote tasks (also one still starting) and the other nodes' own addresses, each
    # behind its node's underlay address.
    assert {(str(p.address), str(p.underlay)) for p in app.peers} == {
        ("10.0.1.11", "198.18.0.2"), ("10.0.1.12", "198.18.0.3"),
        ("10.0.1.3", "198.18.0.2"), ("10.0.1.4", "198.18.0.3")}
    assert plan.listeners == {"appnet": A("10.0.1.2")}  # no DNS on ingress
    assert plan.problems == ()


def test_balancer_and_dns_follow_running_tasks() -> None:
    tasks = web_tasks()
    plan = netplan.plan("n1", NETS, [WEB], tasks, NODES, {"uid-web.1": 4242})
    by_key = {s.key: s for s in plan.services}
    # The VIP balances every port of both protocols over the running tasks (web.3 is
    # still starting), the mesh port over their ingress addresses.
    vip_tcp = by_key[(A("10.254.0.2"), 0, "tcp")]
    assert vip_tcp.backends == (Backend(A("10.0.1.10"), 0), Backend(A("10.0.1.11"), 0))
    assert (A("10.254.0.2"), 0, "udp") in by_key
    assert by_key[(None, 8080, "tcp")].backends == (Backend(A("10.255.0.10"), 80),
                                                    Backend(A("10.255.0.11"), 80))
    (record,) = plan.dns
    assert record.vips == {"appnet": A("10.254.0.2")}
    assert record.tasks == {"appnet": (A("10.0.1.10"), A("10.0.1.11"))}

    # A local task that is leaving, and a remote one desired shut down: both out.
    tasks[1].spec["desiredState"] = "shutdown"
    plan = netplan.plan("n1", NETS, [WEB], tasks, NODES, {"uid-web.1": 4242},
                        leaving={"uid-web.1"})
    by_key = {s.key: s for s in plan.services}
    assert by_key[(A("10.254.0.2"), 0, "tcp")].backends == ()
    assert plan.dns[0].tasks == {"appnet": ()}
    # ... while its veth stays until its workload is gone.
    assert plan.overlay.networks[0].attachments[0].key == "uid-web.1"


def test_aliases_go_into_the_record_of_their_network_only() -> None:
    svc = service("web", [{"name": "appnet", "aliases": ["www", "front"]},
                          {"name": "ingress", "aliases": ["mesh"]}],
                  endpoint=WEB.status["endpoint"])
    (record,) = netplan.plan("n1", NETS, [svc], web_tasks(), NODES, {}).dns
    assert record.aliases == {"appnet": ("www", "front")}
    assert record.tasks == {"appnet": (A("10.0.1.10"), A("10.0.1.11"))}


def test_a_local_task_on_two_networks_is_a_dns_client_of_both() -> None:
    nets = [*NETS, network("back", "10.0.2.0/24", 4098, {"n1": "10.0.2.2", "n2": "10.0.2.3"})]
    tasks = [task("w.1", "w", "n1", {"back": "10.0.2.10/24", "appnet": "10.0.1.20/24",
                                     "ingress": "10.255.0.20/16"}),
             task("w.2", "w", "n2", {"back": "10.0.2.11/24", "appnet": "10.0.1.21/24"}),
             *web_tasks()]
    plan = netplan.plan("n1", nets, [WEB], tasks, NODES, {})
    # Only local tasks on more than one network (ingress aside); remote ones ask elsewhere.
    assert plan.clients == {("back", A("10.0.2.10")): ("back", "appnet"),
                            ("appnet", A("10.0.1.20")): ("back", "appnet")}


def test_host_mode_ports_only_where_a_task_runs() -> None:
    svc = service("h", ["appnet"], ports=[{"target": 80, "published": 9000, "mode": "host"}],
                  endpoint={"mode": "vip", "virtualIPs": [],
                            "ports": [{"protocol": "tcp", "target": 80, "published": 9000,
                                       "mode": "host"}]})
    tasks = [task("h.1", "h", "n2", {"appnet": "10.0.1.20/24", "ingress": "10.255.0.20/16"})]
    here = netplan.plan("n2", NETS, [svc], tasks, NODES, {"uid-h.1": 7})
    assert {s.key: s.backends for s in here.services}[(None, 9000, "tcp")] == (
        Backend(A("10.255.0.20"), 80),)
    elsewhere = netplan.plan("n1", NETS, [svc], tasks, NODES, {})
    assert elsewhere.services == () and elsewhere.overlay.networks == ()


def test_ingress_hosted_everywhere_only_while_something_is_published() -> None:
    plan = netplan.plan("n3", NETS, [WEB], [], NODES, {})
    assert [n.name for n in plan.overlay.networks] == ["ingress"]
    plain = service("plain", ["appnet"])
    assert netplan.plan("n3", NETS, [plain], [], NODES, {}).overlay.networks == ()


def test_missing_allocations_are_problems_not_crashes() -> None:
    nets = [network("appnet", "10.0.1.0/24", 4097, {"n2": "10.0.1.3"})]
    tasks = [task("a.1", "a", "n1", {"appnet": "10.0.1.10/24"})]
    plan = netplan.plan("n1", nets, [], tasks, NODES, {"uid-a.1": 5})
    assert plan.overlay.networks == ()
    assert plan.problems == ("this node has no address on network appnet yet",)
    broken = resource.new("Network", "appnet")
    broken.status = {"subnet": "garbage", "vni": "x"}
    assert netplan.plan("n1", [broken], [], tasks, NODES, {}).problems == (
        "network appnet is not allocated",)


def test_waiting_for_and_nameserver() -> None:
    nets = {n.name: n for n in NETS}
    web = WEB
    pending = task("web.4", "web", "n1", {})
    del pending.spec["networks"]
    assert netplan.waiting_for(pending, web, nets, "n1") == (
        "waiting for network allocation (appnet, ingress)")
    plain = task("p.1", "p", "n1", {})
    del plain.spec["networks"]
    assert netplan.waiting_for(plain, service("p", []), nets, "n1") is None
    allocated = task("web.4", "web", "n9", {"appnet": "10.0.1.30/24"})
    assert netplan.waiting_for(allocated, web, nets, "n9") == (
        "waiting for this node's address on network appnet")
    assert netplan.waiting_for(allocated, web, nets, "n1") is None
    assert netplan.nameserver(allocated, nets, "n1") == A("10.0.1.2")
    only_ingress = task("x.1", "x", "n1", {"ingress": "10.255.0.40/16"})
    assert netplan.nameserver(only_ingress, nets, "n1") is None


def test_allocation_fields_tolerate_garbage() -> None:
    t = resource.new("Task", "t", "default", {"networks": [{"name": "a", "addresses": []}]})
    assert nw.task_attachments(t) is None
    t.spec["networks"] = "nope"
    assert nw.task_attachments(t) is None
    t.spec["networks"] = []
    assert nw.task_attachments(t) == []
    s = resource.new("Service", "s", "default",
                     {"networks": ["a", 3, "a", {"x": 1}, "b"],
                      "endpoint": {"ports": [{"target": "80"}, {"target": 80, "published": 0},
                                             {"target": 53, "protocol": "udp"}, "junk"]}})
    s.status = {"endpoint": {"virtualIPs": [{"network": "a"}, {"network": "b",
                                                               "address": "10.254.0.9"}],
                             "ports": "junk"}}
    assert nw.service_networks(s) == ["a", "b"]
    assert nw.spec_ports(s) == [nw.PublishedPort("udp", 53, None, "ingress")]
    assert nw.endpoint(s) == nw.Endpoint("vip", {"b": A("10.254.0.9")}, ())
    assert nw.task_network_names(s, "ingress") == ["a", "b", "ingress"]


def test_port_conflicts() -> None:
    def svc(name: str, *ports: dict[str, Any]) -> resource.Resource:
        return resource.new("Service", name, "default", {"endpoint": {"ports": list(ports)}})

    live = [svc("api", {"target": 80, "published": 8080}),
            svc("h", {"target": 80, "published": 9000, "mode": "host"})]
    picked = svc("picked", {"target": 80})
    picked.status = {"endpoint": {"ports": [{"protocol": "tcp", "target": 80,
                                             "published": 30000, "mode": "ingress"}]}}
    live.append(picked)
    new = svc("web", {"target": 1, "published": 8080}, {"target": 1, "published": 8080,
                                                          "protocol": "udp"},
              {"target": 1, "published": 9000, "mode": "host"},
              {"target": 1, "published": 30000})
    found = [(s.name, i, m) for s, i, m in nw.port_conflicts([new], live)]
    assert found == [
        ("web", 0, "port 8080/tcp is already published by service default/api"),
        ("web", 3, "port 30000/tcp is already published by service default/picked")]
    # Re-applying a service never conflicts with itself; an ingress port against a
    # host-mode holder does.
    assert nw.port_conflicts([svc("api", {"target": 80, "published": 8080})], live) == []
    clash = nw.port_conflicts([svc("x", {"target": 1, "published": 9000})], live)
    assert [m for _s, _i, m in clash] == [
        "port 9000/tcp is already published by service default/h"]


def test_state_reports_that_change_nothing_planned_leave_the_entry_equal() -> None:
    # The agent's task cache keeps task_entry(task) and tells its readers (the index,
    # hence a pass) only when the entry changes.
    nets = {"appnet": "10.0.1.10/24"}
    starting = netplan.task_entry(task("t1", "web", "n1", nets, state="starting"))
    assert starting is not None
    assert netplan.task_entry(task("t1", "web", "n1", nets, state="assigned")) == starting
    # Each of these changes what the plan reads, so each changes the entry.
    for changed in (task("t1", "web", "n1", nets),  # serving
                    task("t1", "web", "n2", nets, state="starting"),  # node
                    task("t1", "web", "n1", {"appnet": "10.0.1.11/24"},
                         state="starting"),  # address
                    task("t1", "api", "n1", nets, state="starting")):  # service
        assert netplan.task_entry(changed) != starting
    # Desired shut down: no longer serving once it runs; before, nothing planned changes.
    running = netplan.task_entry(task("t1", "web", "n1", nets))
    assert netplan.task_entry(task("t1", "web", "n1", nets, desired="shutdown")) != running
    assert netplan.task_entry(task("t1", "web", "n1", nets, state="starting",
                                   desired="shutdown")) == starting
    # A task no plan counts has no entry: ended, not placed, not attached.
    assert netplan.task_entry(task("t1", "web", "n1", nets, state="failed")) is None
    assert netplan.task_entry(task("t1", "web", "", nets)) is None
    assert netplan.task_entry(task("t1", "web", "n1", {})) is None
    unallocated = task("t1", "web", "n1", nets)
    unallocated.spec["networks"] = [{"name": "appnet"}]
    assert netplan.task_entry(unallocated) is None
