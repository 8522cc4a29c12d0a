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
from typing import Any

import pytest

from shoal.net import ipvs_netlink
from shoal.net.ipvs_netfilter import NFT_TABLE, fwmark_for_vip, render_nft, render_nft_change
from shoal.net.lb import VirtualService
from shoal.net.nft import NftRunner
from tests.e2e.netlab import Lab, have_netns_privileges, sh
from tests.e2e.uml import UmlError, live_group_members, run_python
from tests.e2e.uml_guest import (
    BACKEND_PORT,
    BACKENDS,
    CLIENT,
    PORT,
    PUBLISHED,
    VIP,
    WHOLE_PORTS,
    WHOLE_VIP,
)

# alone: the module boots a user-mode-linux guest that must be up within 50 s; beside the
# parallel pass's workers (load average 15) it was not, so it runs with nothing beside it
# rather than with a longer deadline.
pytestmark = pytest.mark.alone

WEB = f"TCP {VIP}:{PORT} rr"
MESH = f"FWM {0x10000000 | PUBLISHED:#x} rr"
ALL = [(f"{task}:{BACKEND_PORT}", "Masq", 1) for _, task in BACKENDS.values()]
# The whole VIP 10.254.0.20 (0x0afe0014): Shoal | whole-VIP | (udp) | its low 27 bits.
WHOLE_TCP = "FWM 0x32fe0014 rr"
WHOLE_UDP = "FWM 0x3afe0014 rr"
ALL_PORTS = [(f"{task}:0", "Masq", 1) for _, task in BACKENDS.values()]  # port kept


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
    # repair() puts back exactly the deleted real server and says so; then nothing.
    assert guest["repair_report"] == [f"IPVS {VIP}:{PORT}/6: 1 real server(s) restored"]
    assert view(guest["repaired"]) == {WEB: ALL}
    assert guest["repair_again"] == []
    assert view(guest["resynced_after_repair"]) == {WEB: ALL}


def test_whole_vip_marks_are_what_the_kernel_lists() -> None:
    assert f"FWM {fwmark_for_vip(ipaddress.IPv4Address(WHOLE_VIP), 'tcp'):#x} rr" == WHOLE_TCP
    assert f"FWM {fwmark_for_vip(ipaddress.IPv4Address(WHOLE_VIP), 'udp'):#x} rr" == WHOLE_UDP


def test_whole_vip_is_a_fwmark_service_per_protocol(guest: dict[str, Any]) -> None:
    added = guest["whole_added"]
    assert view(added) == {WEB: ALL, WHOLE_TCP: ALL_PORTS, WHOLE_UDP: ALL_PORTS}
    assert added["dummy"] == [f"{VIP}/32", f"{WHOLE_VIP}/32"]
    # One MARK rule per whole VIP and protocol, in the companion's own chain.
    for proto, mark in (("tcp", WHOLE_TCP), ("udp", WHOLE_UDP)):
        rule = (f"-A SHOAL-IPVS-MARK -d {WHOLE_VIP}/32 -p {proto} -j MARK --set-xmark "
                f"{mark.split()[1]}/0xffffffff")
        assert rule in added["companion"].splitlines(), added["companion"]
    # Incremental: only this VIP's address and its two services with their real servers.
    commands = guest["whole_added_commands"]
    assert len(commands) == 2 * (1 + len(BACKENDS)), commands
    assert all("fwmark 0x3" in c for c in commands), commands


def test_whole_vip_balances_every_port_keeping_it(guest: dict[str, Any]) -> None:
    for port in WHOLE_PORTS:
        replies = guest["whole_replies"][str(port)]
        assert len(replies) == 30
        assert names(replies) == {name: 10 for name in BACKENDS}, replies
        for reply in replies:
            name, peer, answered_on = reply.split()
            assert answered_on == str(port), reply  # the client's port, kept
            assert peer == BACKENDS[name][0], reply  # masqueraded


def test_whole_vip_sync_and_adoption_send_nothing(guest: dict[str, Any]) -> None:
    assert guest["whole_resync_commands"] == []
    assert guest["whole_resynced"] == guest["whole_added"]
    assert guest["whole_adopt_commands"] == []
    assert guest["whole_adopted"] == guest["whole_added"]


def test_whole_vip_removal(guest: dict[str, Any]) -> None:
    tcp_gone = guest["whole_tcp_removed"]
    assert view(tcp_gone) == {WEB: ALL, WHOLE_UDP: ALL_PORTS}
    assert f"{WHOLE_VIP}/32" in tcp_gone["dummy"]  # still the udp service's
    assert "-p tcp -j MARK" not in tcp_gone["companion"]
    assert "-p udp -j MARK" in tcp_gone["companion"]
    assert all(r.startswith("ERR") for r in guest["whole_tcp_removed_replies"])
    removed = guest["whole_removed"]
    assert view(removed) == {WEB: ALL}
    assert removed["dummy"] == [f"{VIP}/32"]
    assert WHOLE_VIP not in removed["companion"]


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


@pytest.mark.skipif(not have_netns_privileges(), reason="needs root")
def test_nftables_companion_scripts_apply_on_this_kernel(lab: Lab) -> None:
    ns = lab.ns("ipvsnft")
    web = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:8080"])
    mesh = VirtualService.make(None, 30080, "udp", ["10.0.9.10:53"])
    whole = VirtualService.make("10.254.0.7", 0, "tcp", ["10.0.9.10:0"])
    six, seven = ipaddress.IPv4Address("10.254.0.6"), ipaddress.IPv4Address("10.254.0.7")
    runner = NftRunner(ns)
    try:
        runner.run_sync(render_nft([web, mesh, whole]))
        runner.run_sync(render_nft([web, mesh, whole]))  # the full script replaces
        runner.run_sync(render_nft_change(vips_added=[six], ports_removed=[("udp", 30080)],
                                          marks_added=[(six, "udp")]))
        out = sh("ip", "netns", "exec", ns, "nft", "list", "table", *NFT_TABLE.split()).stdout
        assert "10.254.0.5" in out and "10.254.0.6" in out
        assert "30080" not in out
        assert "masquerade" in out
        assert "10.254.0.7 . tcp : 0x32fe0007" in out
        assert "10.254.0.6 . udp : 0x3afe0006" in out
        runner.run_sync(render_nft_change(marks_removed=[(seven, "tcp")]))
        out = sh("ip", "netns", "exec", ns, "nft", "list", "table", *NFT_TABLE.split()).stdout
        assert "0x32fe0007" not in out and "0x3afe0006" in out
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
