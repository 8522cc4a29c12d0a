"""The IPVS load balancer for real, under user-mode-linux (this machine's kernel has none).

One UML boot (tests/e2e/uml.py) runs the ``ipvs`` scenario of tests/e2e/uml_guest.py: the
guest's root namespace is the node, three backend namespaces answer ``<name> <peer>``, a
client namespace connects. Every test below asserts one part of what the guest recorded:
the kernel's own listing (/proc/net/ip_vs), traffic, and what is left after each step.
UML failing to boot is a failure with its console, never a skip.

The UML kernel has no nf_tables for the ``ip`` family, so the balancer's netfilter
companion there is iptables-legacy; the nftables companion's scripts are checked against
this host's nftables at the end.
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.net import ipvs_netlink
from shoal.net.lb import VirtualService
from shoal.net.lb_ipvs import NFT_TABLE, render_nft, render_nft_change
from shoal.net.nft import NftRunner
from tests.e2e.netlab import Lab, have_netns_privileges, sh
from tests.e2e.uml import UmlError, live_group_members, run_python
from tests.e2e.uml_guest import BACKEND_PORT, BACKENDS, CLIENT, PORT, PUBLISHED, VIP

WEB = f"TCP {VIP}:{PORT} rr"
MESH = f"FWM {0x10000000 | PUBLISHED:#x} rr"
ALL = [(f"{task}:{BACKEND_PORT}", "Masq", 1) for _, task in BACKENDS.values()]


@pytest.fixture(scope="module")
def guest() -> dict[str, Any]:
    try:
        run = run_python("tests.e2e.uml_guest", "ipvs", timeout=50)
    except UmlError as exc:
        pytest.fail(str(exc), pytrace=False)
    if run.result["error"] is not None:
        pytest.fail(f"guest program failed:\n{run.result['error']}\n--- guest log ---\n"
                    f"{run.guest_log[-3000:]}", pytrace=False)
    steps: dict[str, Any] = run.result["steps"]
    return steps


def view(snapshot: dict[str, Any]) -> dict[str, list[tuple[str, str, int]]]:
    return {k: [tuple(d) for d in v] for k, v in snapshot["view"].items()}  # type: ignore[misc]


def names(replies: list[str]) -> collections.Counter[str]:
    return collections.Counter(r.split()[0] if not r.startswith("ERR") else r
                               for r in replies)


def test_detects_ipvs_and_loads_it_on_demand(guest: dict[str, Any]) -> None:
    assert guest["ip_vs_loaded_before_detect"] is False
    assert guest["detect_backend"] == "ipvs"
    assert guest["conntrack_sysctl"] == "1"  # masquerading IPVS traffic needs it
    assert guest["netfilter"] == "iptables"  # no nf_tables for ip in the UML kernel


def test_kernel_view_after_sync(guest: dict[str, Any]) -> None:
    # The kernel's own listing: the VIP service and the published-port fwmark service,
    # round robin, three real servers each, all masqueraded (not pyroute2's default 3,
    # direct routing, which /proc would show as "Route").
    assert view(guest["synced"]) == {WEB: ALL, MESH: ALL}
    assert guest["synced"]["dummy"] == [f"{VIP}/32"]


def test_traffic_is_balanced_and_masqueraded(guest: dict[str, Any]) -> None:
    assert guest["direct"] == [f"{name} {CLIENT[1]}" for name in BACKENDS]
    for key in ("vip_replies", "published_replies"):
        replies = guest[key]
        assert len(replies) == 30
        assert names(replies) == {name: 10 for name in BACKENDS}, replies
        # Each backend saw the node's own address on its link, not the client's: the
        # companion masqueraded IPVS's traffic, so replies return through this node.
        for reply in replies:
            name, peer = reply.split()
            assert peer == BACKENDS[name][0], reply


def test_endpoint_removal(guest: dict[str, Any]) -> None:
    assert view(guest["updated"]) == {WEB: [d for d in ALL if "10.1.2." not in d[0]],
                                      MESH: ALL}
    seen = names(guest["updated_replies"])
    assert set(seen) == {"b1", "b3"} and sum(seen.values()) == 30, seen


def test_service_removal(guest: dict[str, Any]) -> None:
    assert view(guest["removed"]) == {MESH: ALL}
    assert guest["removed"]["dummy"] == []  # its VIP address left with it
    assert all(r.startswith("ERR") for r in guest["removed_replies"])
    # The other service is untouched.
    assert set(names(guest["published_after_remove"])) == set(BACKENDS)


def test_full_sync_is_idempotent(guest: dict[str, Any]) -> None:
    first, second = guest["resynced"]
    assert first == second
    assert view(first) == {WEB: ALL, MESH: ALL}
    assert first["companion"].count("-j SHOAL-IPVS-MARK") == 2  # jumps not duplicated
    assert set(names(guest["resynced_replies"])) == set(BACKENDS)


def test_fresh_balancer_adopts_and_prunes(guest: dict[str, Any]) -> None:
    # A new instance told only about the VIP service removes the published port it no
    # longer wants (ownership by mark) and keeps the rest as it is.
    assert view(guest["adopted"]) == {WEB: ALL}
    assert "--dport 30080" not in guest["adopted"]["companion"]


def test_resync_repairs_drift(guest: dict[str, Any]) -> None:
    assert view(guest["drifted"]) == {WEB: ALL[1:]}
    assert view(guest["repaired"]) == {WEB: ALL}


def test_teardown_leaves_nothing(guest: dict[str, Any]) -> None:
    torn = guest["torn_down"]
    assert torn["view"] == {} and torn["dummy"] == []
    assert "SHOAL" not in torn["companion"]
    assert "shoal-ipvs0" not in guest["torn_down_links"]
    assert all(r.startswith("ERR") for r in guest["torn_down_vip_replies"])


def test_stuck_guest_is_killed_and_cleaned_up() -> None:
    with pytest.raises(UmlError, match="timed out") as caught:
        run_python("tests.e2e.uml_guest", "hang", timeout=8)
    err = caught.value
    assert err.run_dir is not None and not err.run_dir.exists()
    assert err.pgid is not None and live_group_members(err.pgid) == []


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.mark.skipif(not have_netns_privileges(), reason="needs root")
def test_nftables_companion_scripts_apply_on_this_kernel(lab: Lab) -> None:
    ns = lab.ns("ipvsnft")
    web = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:8080"])
    mesh = VirtualService.make(None, 30080, "udp", ["10.0.9.10:53"])
    runner = NftRunner(ns)
    try:
        runner.run_sync(render_nft([web, mesh]))
        runner.run_sync(render_nft([web, mesh]))  # the full script replaces, never adds
        runner.run_sync(render_nft_change(vips_added=[ipaddress.IPv4Address("10.254.0.6")],
                                          ports_removed=[("udp", 30080)]))
        out = sh("ip", "netns", "exec", ns, "nft", "list", "table", *NFT_TABLE.split()).stdout
        assert "10.254.0.5" in out and "10.254.0.6" in out
        assert "30080" not in out
        assert "masquerade" in out
    finally:
        runner.close()


@pytest.mark.skipif(not have_netns_privileges(), reason="needs root")
def test_batched_vip_addresses_on_this_kernel(lab: Lab) -> None:
    # The rtnetlink half of ipvs_netlink (VIP addresses in bulk) needs no IPVS, so it is
    # checked here against `ip`'s own reading.
    ns = lab.ns("ipvsaddr")
    sh("ip", "-n", ns, "link", "add", "d0", "type", "bridge")  # this kernel: no dummy
    index = int(sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/d0/ifindex").stdout)
    batch = ipvs_netlink.NetlinkBatch(None, lab.path(ns))
    try:
        vips = [ipaddress.IPv4Address(f"10.254.{i // 250}.{i % 250 + 1}") for i in range(600)]
        batch.run([ipvs_netlink.add_address(index, v) for v in vips])
        batch.run([ipvs_netlink.add_address(index, v) for v in vips[:5]])  # EEXIST is fine
        listed = sh("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "d0").stdout
        assert {ipaddress.IPv4Address(ln.split()[3].split("/")[0])
                for ln in listed.splitlines()} == set(vips)
        assert batch.ipv4_addresses(index) == set(vips)
        batch.run([ipvs_netlink.del_address(index, v) for v in vips[:300]])
        batch.run([ipvs_netlink.del_address(index, v) for v in vips[:2]])  # already gone
        assert batch.ipv4_addresses(index) == set(vips[300:])
        with pytest.raises(ipvs_netlink.NetlinkBatchError, match="refused 1 request"):
            batch.run([ipvs_netlink.add_address(index + 1000, vips[0])])  # no such link
    finally:
        batch.close()
