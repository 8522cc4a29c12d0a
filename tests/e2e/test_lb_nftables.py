"""The nftables load balancer for real: a VIP on a node namespace balanced over backend
task namespaces on two nodes of a VXLAN overlay, a published port on the underlay, and a
10,000-service table (correctness only; bench/dataplane.py times it)."""

from __future__ import annotations

import collections
import os
import sys

import pytest

from bench import dataplane as dataplane_bench
from shoal.net.lb import VirtualService
from shoal.net.lb_factory import detect_backend
from shoal.net.lb_nftables import NftablesLoadBalancer
from shoal.net.overlay import OverlayNode
from tests.e2e.netcluster import NETTOOL, Cluster, tcp
from tests.e2e.netlab import Lab, have_netns_privileges, sh

pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and nft")


def test_detect_backend_here() -> None:
    # IPVS only when the kernel has it (probing may autoload the module, which creates
    # /proc/net/ip_vs); on this machine's kernel the nftables fallback is chosen.
    chosen = detect_backend()
    assert chosen == ("ipvs" if os.path.exists("/proc/net/ip_vs") else "nftables")


async def test_vip_balances_and_follows_endpoints(lab: Lab) -> None:
    nodes = [lab.node() for _ in range(2)]
    cluster = Cluster(lab, nodes)
    client = cluster.add_task("client", 0)
    placement = {"b1": 0, "b2": 1, "b3": 1}
    for name, node in placement.items():
        ns = cluster.add_task(name, node)
        lab.spawn(ns, sys.executable, NETTOOL, "serve", name, "7000")
    for i, n in enumerate(nodes):
        await OverlayNode(n.underlay, netns=n.ns).sync(cluster.state(i))
    vip_range = cluster.alloc.network("appnet").vip_range
    assert vip_range is not None
    vip = str(cluster.alloc.allocate_vip("appnet", "demo/web"))
    backends = [f"{cluster.ip(b)}:7000" for b in placement]

    lb = NftablesLoadBalancer(netns=nodes[0].ns)
    try:
        assert lb.backend_name == "nftables"
        await lb.sync([VirtualService.make(vip, 80, "tcp", backends)])
        # Wait for the servers, then spread: every backend, two of them across VXLAN
        # (which works only because VIP traffic is masqueraded to the node's address).
        for b in placement:
            assert tcp(lab, client, cluster.ip(b)) == [b]
        seen = collections.Counter(tcp(lab, client, vip, 80, count=60))
        assert set(seen) == set(placement), seen
        assert min(seen.values()) >= 5, seen

        # One endpoint leaves: no new connection reaches it.
        await lb.update_service(VirtualService.make(vip, 80, "tcp", backends[:1] + backends[2:]))
        seen = collections.Counter(tcp(lab, client, vip, 80, count=30))
        assert set(seen) == {"b1", "b3"}, seen

        # No endpoints: refused at once (reset), not a timeout through a default route.
        await lb.update_service(VirtualService.make(vip, 80, "tcp", []))
        assert tcp(lab, client, vip, 80, retry=0) == ["ERR", "ConnectionRefusedError"]
        # A port the VIP does not serve is refused too.
        assert tcp(lab, client, vip, 81, retry=0) == ["ERR", "ConnectionRefusedError"]

        # Published ingress port: answers on node 0's underlay address, from node 1.
        await lb.sync([VirtualService.make(vip, 80, "tcp", backends),
                       VirtualService.make(None, 30080, "tcp", backends)])
        seen = collections.Counter(tcp(lab, nodes[1].ns, str(nodes[0].underlay), 30080,
                                       count=30))
        assert set(seen) == set(placement), seen

        # Someone deletes our table: the next change notices and rebuilds it whole.
        sh("ip", "netns", "exec", nodes[0].ns, "nft", "delete", "table", "ip", "shoal")
        await lb.update_service(VirtualService.make(vip, 80, "tcp", backends[:1]))
        assert set(tcp(lab, client, vip, 80, count=5)) == {"b1"}
        # Drift that no command trips over (rules flushed) is repaired by a resync.
        sh("ip", "netns", "exec", nodes[0].ns, "nft", "flush", "table", "ip", "shoal")
        await lb.resync()
        assert set(tcp(lab, client, vip, 80, count=5)) == {"b1"}

        await lb.teardown()
        out = sh("ip", "netns", "exec", nodes[0].ns, "nft", "list", "tables").stdout
        assert "shoal" not in out
    finally:
        await lb.close()


async def test_ten_thousand_services(lab: Lab) -> None:
    ns = lab.ns("big")
    services = dataplane_bench.services(10_000, 10)  # what bench/dataplane.py times
    lb = NftablesLoadBalancer(netns=ns)
    try:
        await lb.sync(services)

        def nft(*argv: str) -> str:
            return sh("ip", "netns", "exec", ns, "nft", *argv).stdout

        # (Each `nft get element` reads the whole 100,000-element map: few calls, many keys.)
        got = nft("get", "element", "ip", "shoal", "be_tcp",
                  "{ 10.254.0.34 . 80 . 7, 10.254.0.1 . 80 . 9 }")
        assert "10.1.33.8 . 8080" in got and "10.1.0.10 . 8080" in got
        # One endpoint change at that size touches only that service's elements.
        changed = VirtualService.make("10.254.0.34", 80, "tcp",
                                      [f"10.9.9.{j + 1}:8080" for j in range(3)])
        await lb.update_service(changed)
        got = nft("get", "element", "ip", "shoal", "be_tcp",
                  "{ 10.254.0.34 . 80 . 2, 10.254.0.1 . 80 . 9 }")
        assert "10.9.9.3 . 8080" in got and "10.1.0.10 . 8080" in got
        dispatch = nft("list", "map", "ip", "shoal", "svc")
        assert dispatch.count("goto lb_tcp_10") == 9_999
        assert "10.254.0.34 . tcp . 80 : goto lb_tcp_3" in dispatch
        # A sync with the same services is a no-op (nothing to send to the kernel).
        await lb.sync([changed if s.key == changed.key else s for s in services])
    finally:
        await lb.close()
