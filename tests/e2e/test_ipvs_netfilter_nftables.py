"""The IPVS balancer's nftables companion (``ip shoal_ipvs``) on this host's kernel -- its
IPVS half needs user-mode-linux (test_lb_ipvs_uml.py), this half does not: ``repair()``
writes nothing while the table holds what the services need (watched with ``nft
monitor``), and after drift rewrites it and says what had drifted."""

from __future__ import annotations

import pytest

from shoal.net.ipvs_netfilter import NftCompanion, fwmark_for
from shoal.net.lb import VirtualService
from shoal.net.nft import NftRunner
from tests.e2e.netlab import Lab, have_netns_privileges, sh
from tests.e2e.test_lb_nftables_netlink import Monitor

pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and nft")


async def test_companion_repair_reports_drift_and_is_quiet_otherwise(lab: Lab) -> None:
    ns = lab.ns("ipvs")
    web = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:8080"])
    whole = VirtualService.make("10.254.0.7", 0, "udp", ["10.0.9.11:0"])
    mesh = VirtualService.make(None, 30080, "tcp", ["10.255.0.5:80"])
    services = [web, whole, mesh]

    def nft(script: str) -> str:
        return sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=script).stdout

    def listing() -> str:
        return nft("list table ip shoal_ipvs\n")

    monitor = Monitor(ns)
    companion = NftCompanion(NftRunner(ns))
    try:
        await companion.probe()  # what IpvsLoadBalancer does first: an empty table
        first = await companion.repair(services)
        assert "chain tag of table ip shoal_ipvs was missing: restored" in first, first
        assert "restored 2 element(s) of set vips of table ip shoal_ipvs: 10.254.0.5, " \
               "10.254.0.7" in first, first
        want = listing()
        assert f"tcp . 30080 : {fwmark_for('tcp', 30080):#x}" in want, want
        assert "10.254.0.7 . udp" in want, want

        # Nothing drifted: nothing reported, nothing written.
        report, writes = await monitor.writes_during(companion.repair(services))
        assert (report, writes) == ([], [])

        # Elements missing, changed and stray; a policy changed; a set not Shoal's.
        nft("delete element ip shoal_ipvs vips { 10.254.0.5 }\n"
            "delete element ip shoal_ipvs fwmarks { tcp . 30080 }\n"
            "add element ip shoal_ipvs fwmarks { tcp . 30080 : 0x1 }\n"
            "add element ip shoal_ipvs vipmarks { 192.0.2.9 . tcp : 0x5 }\n"
            "add chain ip shoal_ipvs prerouting { type filter hook prerouting "
            "priority -150; policy drop; }\n"
            "add set ip shoal_ipvs extra { type ipv4_addr; }\n")
        report, writes = await monitor.writes_during(companion.repair(services))
        assert report == [
            "chain prerouting of table ip shoal_ipvs differed (type filter hook prerouting "
            "priority -150 policy drop; Shoal's: type filter hook prerouting priority -150 "
            "policy accept): recreated",
            "restored 1 element(s) of set vips of table ip shoal_ipvs: 10.254.0.5",
            "restored 1 element(s) of set fwmarks of table ip shoal_ipvs: tcp . 30080",
            "removed 1 stray element(s) from set vipmarks of table ip shoal_ipvs: "
            "192.0.2.9 . tcp",
            "set extra is not Shoal's: removed from table ip shoal_ipvs"], report
        assert writes, "the drift was written"
        assert listing() == want
        report, writes = await monitor.writes_during(companion.repair(services))
        assert (report, writes) == ([], [])

        # The whole table gone.
        nft("delete table ip shoal_ipvs\n")
        assert await companion.repair(services) == ["table ip shoal_ipvs was missing: rebuilt"]
        assert listing() == want
        # Fewer services: what no longer belongs is reported as stray and removed.
        assert await companion.repair([web]) == [
            "removed 1 stray element(s) from set vips of table ip shoal_ipvs: 10.254.0.7",
            "removed 1 stray element(s) from set fwmarks of table ip shoal_ipvs: tcp . 30080",
            "removed 1 stray element(s) from set vipmarks of table ip shoal_ipvs: "
            "10.254.0.7 . udp"]
    finally:
        monitor.close()
        companion.close()
