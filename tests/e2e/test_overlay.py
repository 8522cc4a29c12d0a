"""The VXLAN overlay for real: three node namespaces on one underlay bridge, task
namespaces behind veths, OverlayNode driving each node's namespace through netlink."""

from __future__ import annotations

import sys

import pytest

from shoal.net import naming
from shoal.net.overlay import OverlayNode
from tests.e2e.netcluster import NETTOOL, Cluster, dump, tcp
from tests.e2e.netlab import Lab, have_netns_privileges, sh

pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2")

async def test_overlay_across_three_nodes(lab: Lab) -> None:
    nodes = [lab.node() for _ in range(3)]
    cluster = Cluster(lab, nodes)
    ns = {name: cluster.add_task(name, node) for name, node in
          [("t1", 0), ("t2", 1), ("t3", 2), ("t4", 0)]}
    overlays = [OverlayNode(n.underlay, netns=n.ns) for n in nodes]
    for i, ov in enumerate(overlays):
        report = await ov.sync(cluster.state(i))
        assert report, "first sync must build something"
    for name in ("t2", "t3", "t4"):
        lab.spawn(ns[name], sys.executable, NETTOOL, "serve", name, "7000")

    # Cross-node over VXLAN (t1 on node 0 -> t2 on 1, t3 on 2) and same-node (t4).
    for name in ("t2", "t3", "t4"):
        assert tcp(lab, ns["t1"], cluster.ip(name)) == [name]
    # The node's own address on the network answers (gateway and DNS live there).
    # (A reset from a closed port proves the round trip without needing ping.)
    assert tcp(lab, ns["t1"], str(cluster.node_ip(0)), 9, retry=0) == [
        "ERR", "ConnectionRefusedError"]

    # MTU: underlay 1500 - 50 everywhere; a full-size DF datagram crosses the underlay.
    mtu = await overlays[0].overlay_mtu()
    assert mtu == 1450
    for where, ifname in [(nodes[0].ns, naming.bridge_name(cluster.alloc.network("appnet").vni)),
                          (nodes[0].ns, naming.vxlan_name(cluster.alloc.network("appnet").vni)),
                          (ns["t1"], "eth0")]:
        assert "mtu 1450 " in sh("ip", "-n", where, "link", "show", ifname).stdout
    full = lab.exec(ns["t1"], sys.executable, NETTOOL, "udp", cluster.ip("t3"), "7000",
                    str(mtu - 28)).stdout
    assert full.strip() == f"t3 {mtu - 28}"
    over = lab.exec(ns["t1"], sys.executable, NETTOOL, "udp", cluster.ip("t3"), "7000",
                    str(mtu - 27)).stdout
    assert over.startswith("ERR")  # EMSGSIZE: the task knows its MTU, nothing fragments

    # The task end: derived MAC, address, routes via the node's own address.
    link = sh("ip", "-n", ns["t1"], "link", "show", "eth0").stdout
    assert naming.mac_for(cluster.ip("t1")) in link
    routes = sh("ip", "-n", ns["t1"], "route").stdout
    vip_range = cluster.alloc.network("appnet").vip_range
    assert f"default via {cluster.node_ip(0)} dev eth0" in routes
    assert f"{vip_range} via {cluster.node_ip(0)} dev eth0" in routes
    # Static FDB/neigh for every remote endpoint; learning off; no flood entry.
    vni = cluster.alloc.network("appnet").vni
    fdb = sh("bridge", "-n", nodes[0].ns, "fdb", "show", "dev", naming.vxlan_name(vni)).stdout
    assert f"{naming.mac_for(cluster.ip('t2'))} dst {nodes[1].underlay}" in fdb
    assert f"{naming.mac_for(cluster.node_ip(2))} dst {nodes[2].underlay}" in fdb
    assert "00:00:00:00:00:00" not in fdb
    details = sh("ip", "-n", nodes[0].ns, "-d", "link", "show", naming.vxlan_name(vni)).stdout
    assert "nolearning" in details and "proxy" in details and "dstport 4789" in details

    # Idempotent: a second sync, and a sync by a freshly started agent, change nothing.
    before = [dump(lab, n.ns) for n in nodes] + [dump(lab, ns[t]) for t in ns]
    for i, ov in enumerate(overlays):
        assert (await ov.sync(cluster.state(i))).changes == []
    restarted = OverlayNode(nodes[1].underlay, netns=nodes[1].ns)
    assert (await restarted.sync(cluster.state(1))).changes == []
    after = [dump(lab, n.ns) for n in nodes] + [dump(lab, ns[t]) for t in ns]
    assert before == after

    # Stale removal: t3 leaves, node 2 hosts nothing on the network any more.
    cluster.remove_task("t3")
    report = await overlays[2].sync(cluster.state(2))
    assert any("deleted stale link" in c for c in report.changes)
    left = sh("ip", "-n", nodes[2].ns, "-br", "link").stdout
    assert not any(naming.is_ours(line.split("@")[0].split()[0]) for line in left.splitlines())
    assert "eth0" not in sh("ip", "-n", ns["t3"], "-br", "link").stdout
    report = await overlays[0].sync(cluster.state(0))
    assert sorted(c.split()[0:2] for c in report.changes) == [["fdb", "del"]] * 2 + [
        ["neigh", "del"]] * 2
    fdb = sh("bridge", "-n", nodes[0].ns, "fdb", "show", "dev", naming.vxlan_name(vni)).stdout
    assert str(nodes[2].underlay) not in fdb
    assert tcp(lab, ns["t1"], cluster.ip("t2")) == ["t2"]


async def test_sync_repairs_only_what_drifted(lab: Lab) -> None:
    nodes = [lab.node() for _ in range(2)]
    cluster = Cluster(lab, nodes)
    ns1 = cluster.add_task("a", 0)
    cluster.add_task("b", 1)
    ov = OverlayNode(nodes[0].underlay, netns=nodes[0].ns)
    await ov.sync(cluster.state(0))
    vni = cluster.alloc.network("appnet").vni
    vx = naming.vxlan_name(vni)
    # Someone removes an FDB entry, changes an MTU and adds a foreign route.
    sh("bridge", "-n", nodes[0].ns, "fdb", "del", naming.mac_for(cluster.ip("b")), "dev", vx,
       "dst", str(nodes[1].underlay))
    sh("ip", "-n", ns1, "link", "set", "eth0", "mtu", "1400")
    sh("ip", "-n", ns1, "route", "add", "10.77.0.0/16", "via", str(cluster.node_ip(0)))
    report = await ov.sync(cluster.state(0))
    kinds = sorted(c.split()[0] for c in report.changes)
    assert kinds == ["fdb", "route", "set"], report.changes
    assert (await ov.sync(cluster.state(0))).changes == []
    # The task namespace disappears under the agent (container gone): its veth goes too,
    # and a sync without the task is clean.
    cluster.remove_task("a")
    report = await ov.sync(cluster.state(0))
    assert report.changes and all("deleted stale link" in c for c in report.changes)


async def test_a_quick_pass_trusts_verified_tasks_until_their_veth_changes(lab: Lab) -> None:
    nodes = [lab.node() for _ in range(2)]
    cluster = Cluster(lab, nodes)
    ns1 = cluster.add_task("a", 0)
    ov = OverlayNode(nodes[0].underlay, netns=nodes[0].ns)
    await ov.sync(cluster.state(0), thorough=False)  # nothing verified yet: all built
    assert "inet " in sh("ip", "-n", ns1, "addr", "show", "eth0").stdout
    # Drift inside the task goes unseen by a quick pass (it does not look in there)...
    sh("ip", "-n", ns1, "route", "add", "10.77.0.0/16", "via", str(cluster.node_ip(0)))
    assert (await ov.sync(cluster.state(0), thorough=False)).changes == []
    # ...and is repaired by the next thorough one.
    assert [c.split()[0] for c in (await ov.sync(cluster.state(0))).changes] == ["route"]
    # A host end that changed is looked at again at once; so is a task added later.
    vni = cluster.alloc.network("appnet").vni
    veth = naming.veth_name("a", "appnet")
    sh("ip", "-n", nodes[0].ns, "link", "set", veth, "nomaster")
    ns2 = cluster.add_task("c", 0)
    report = await ov.sync(cluster.state(0), thorough=False)
    assert f"enslaved {veth} to {naming.bridge_name(vni)}" in report.changes, report.changes
    assert any("created veth" in c for c in report.changes), report.changes
    assert "inet " in sh("ip", "-n", ns2, "addr", "show", "eth0").stdout
    assert (await ov.sync(cluster.state(0), thorough=False)).changes == []
    assert (await ov.sync(cluster.state(0))).changes == []


async def test_a_subnet_the_host_uses_is_refused_not_routed(lab: Lab) -> None:
    # A node whose own network overlaps the overlay's subnet (here: a route the admin set
    # up on another device) must not get a bridge with a connected route for it: that
    # would take the host's traffic (its nameserver, its LAN) into the overlay. The
    # network is refused with the reason; other networks and the host stay as they were.
    node = lab.node()
    cluster = Cluster(lab, [node])
    cluster.add_task("t1", 0)
    subnet = cluster.alloc.network("appnet").subnet
    sh("ip", "-n", node.ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
    sh("ip", "-n", node.ns, "link", "set", "lan1", "up")
    sh("ip", "-n", node.ns, "link", "set", "lan0", "up")
    sh("ip", "-n", node.ns, "route", "add", str(subnet), "dev", "lan0")
    routes_before = sh("ip", "-n", node.ns, "route").stdout

    report = await OverlayNode(node.underlay, netns=node.ns).sync(cluster.state(0))

    assert list(report.refused) == ["appnet"]
    assert f"overlaps this host's route {subnet} (dev lan0)" in report.refused["appnet"]
    links = sh("ip", "-n", node.ns, "-br", "link").stdout
    assert naming.bridge_name(cluster.alloc.network("appnet").vni) not in links
    assert sh("ip", "-n", node.ns, "route").stdout == routes_before
