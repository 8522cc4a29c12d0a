"""The overlay's links carry the offloads and MTU its throughput rests on, on a real
kernel: read back with the ethtool ioctl in the node's namespace, repaired when someone
turned them off, and left untouched (no flap) by a restarted agent."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.ethtool.ioctl import IoctlEthtool

from shoal.net import naming
from shoal.net import netns as netns_mod
from shoal.net.overlay import OverlayNode
from tests.e2e.netcluster import NETTOOL, Cluster, tcp
from tests.e2e.netlab import Lab, have_netns_privileges

pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2")

SEGMENTATION = ["tx-checksum-ip-generic", "tx-scatter-gather", "tx-tcp-segmentation",
                "tx-generic-segmentation"]


def _in(lab: Lab, ns: str, fn: Any) -> Any:
    return netns_mod.run_in(lab.path(ns), fn)


def active(lab: Lab, ns: str, ifname: str) -> set[str]:
    """The features active on ``ifname`` in ``ns``, as the ethtool ioctl reports them."""
    def read() -> set[str]:
        eth = IoctlEthtool(ifname)
        try:
            return {name for name, on, *_ in eth.get_features() if on}
        finally:
            eth.close()
    result: set[str] = _in(lab, ns, read)
    return result


def switch_off(lab: Lab, ns: str, ifname: str, feature: str) -> None:
    """What ``ethtool -K <ifname> <feature> off`` does."""
    def write() -> None:
        eth = IoctlEthtool(ifname)
        try:
            features = eth.get_features()
            features.set_value(feature, False)
            eth.set_features(features)
        finally:
            eth.close()
    _in(lab, ns, write)


def links(lab: Lab, ns: str) -> dict[str, tuple[int, int, int]]:
    """Shoal's links in ``ns``: name -> (index, MTU, carrier changes)."""
    def read() -> dict[str, tuple[int, int, int]]:
        with IPRoute() as ipr:
            return {link.get("ifname"): (link["index"], link.get("mtu"),
                                         link.get("IFLA_CARRIER_CHANGES"))
                    for link in ipr.link("dump") if naming.is_ours(link.get("ifname"))}
    result: dict[str, tuple[int, int, int]] = _in(lab, ns, read)
    return result


async def test_overlay_links_carry_offloads_and_get_them_back(lab: Lab) -> None:
    nodes = [lab.node() for _ in range(2)]
    cluster = Cluster(lab, nodes)
    ns = {name: cluster.add_task(name, node) for name, node in [("a", 0), ("b", 1),
                                                                ("c", 0)]}
    overlays = [OverlayNode(n.underlay, netns=n.ns) for n in nodes]
    for i, ov in enumerate(overlays):
        assert (await ov.sync(cluster.state(i))).warnings == []
    lab.spawn(ns["b"], sys.executable, NETTOOL, "serve", "b", "7000")
    vni = cluster.alloc.network("appnet").vni
    br, vx = naming.bridge_name(vni), naming.vxlan_name(vni)
    veth_a, veth_c = naming.veth_name("a", "appnet"), naming.veth_name("c", "appnet")
    node = nodes[0].ns

    # What Shoal made carries the offloads that keep superpackets whole, and one MTU,
    # underlay minus the VXLAN overhead, on every link of the path (no fragmentation).
    for ifname in (br, veth_a, veth_c):
        assert set(SEGMENTATION) <= active(lab, node, ifname), ifname
    assert {*SEGMENTATION, "rx-gro"} <= active(lab, node, vx)
    assert {mtu for _, mtu, _ in links(lab, node).values()} == {1450}
    assert "mtu 1450 " in lab.exec(ns["a"], "ip", "link", "show", "eth0").stdout
    assert tcp(lab, ns["a"], cluster.ip("b")) == ["b"]

    # Someone turns checksum offload off on the VXLAN device (which takes TSO with it)
    # and scatter-gather off on a task's veth: a sync puts them back and says so.
    switch_off(lab, node, vx, "tx-checksum-ip-generic")
    switch_off(lab, node, veth_a, "tx-scatter-gather")
    assert "tx-tcp-segmentation" not in active(lab, node, vx)
    assert "tx-scatter-gather" not in active(lab, node, veth_a)
    # A quick pass trusts links it checked before (overlay.py says why)...
    assert (await overlays[0].sync(cluster.state(0), thorough=False)).changes == []
    # ...the next thorough one looks again.
    report = await overlays[0].sync(cluster.state(0))
    assert sorted(report.changes) == [
        f"set offloads on {veth_a}: tx-scatter-gather, tx-tcp-segmentation, "
        "tx-generic-segmentation",
        f"set offloads on {vx}: tx-checksum-ip-generic, tx-tcp-segmentation"], report.changes
    assert {*SEGMENTATION, "rx-gro"} <= active(lab, node, vx)
    assert set(SEGMENTATION) <= active(lab, node, veth_a)
    assert tcp(lab, ns["a"], cluster.ip("b")) == ["b"]

    # A restarted agent finds everything as wanted: no change, and no link replaced or
    # bounced (same index, no carrier change).
    before = links(lab, node)
    restarted = OverlayNode(nodes[0].underlay, netns=node)
    again = await restarted.sync(cluster.state(0))
    assert again.changes == [] and again.warnings == []
    assert links(lab, node) == before
    assert tcp(lab, ns["c"], cluster.ip("b")) == ["b"]
