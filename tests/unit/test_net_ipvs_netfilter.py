"""shoal.net.ipvs_netfilter: the marking and masquerading scripts, without a kernel."""

from __future__ import annotations

import ipaddress
import struct

from shoal.net import ipvs_netfilter
from shoal.net.lb import VirtualService


def test_iptables_companion() -> None:
    web = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:8080"])
    mesh = VirtualService.make(None, 30080, "tcp", ["10.0.9.10:8080"])
    script = ipvs_netfilter.render_iptables([web, mesh])
    lines = script.splitlines()
    # Our chains are declared (so restore flushes them) and the jumps added once.
    assert ":SHOAL-IPVS-MARK - [0:0]" in lines and ":SHOAL-IPVS-MASQ - [0:0]" in lines
    assert "-A PREROUTING -j SHOAL-IPVS-MARK" in lines
    assert "-A OUTPUT -j SHOAL-IPVS-MARK" in lines
    assert "-A POSTROUTING -j SHOAL-IPVS-MASQ" in lines
    # VIPs need no rule; the published port is marked for its fwmark service.
    assert "10.254.0.5" not in script
    mark = ipvs_netfilter.fwmark_for("tcp", 30080)
    assert (f"-A SHOAL-IPVS-MARK -p tcp -m tcp --dport 30080 -m addrtype --dst-type LOCAL "
            f"! -d 127.0.0.0/8 -j MARK --set-xmark {mark:#x}/0xffffffff") in lines
    assert ("-A SHOAL-IPVS-MASQ -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ "
            "-j MASQUERADE") in lines

    saved = ("*mangle\n:PREROUTING ACCEPT [0:0]\n:SHOAL-IPVS-MARK - [0:0]\n"
             "-A PREROUTING -j SHOAL-IPVS-MARK\n-A OUTPUT -j SHOAL-IPVS-MARK\nCOMMIT\n"
             "*nat\n:SHOAL-IPVS-MASQ - [0:0]\n-A POSTROUTING -j SHOAL-IPVS-MASQ\nCOMMIT\n")
    jumps = ipvs_netfilter.iptables_jumps(saved)
    assert jumps == {("mangle", "PREROUTING"), ("mangle", "OUTPUT"), ("nat", "POSTROUTING")}
    again = ipvs_netfilter.render_iptables([web], jumps_present=jumps)
    assert "-A PREROUTING" not in again and "-A POSTROUTING" not in again
    assert "--dport" not in again  # the published port is gone from the rewritten chain

    teardown = ipvs_netfilter.render_iptables_teardown(saved).splitlines()
    assert teardown == ["*mangle", "-D OUTPUT -j SHOAL-IPVS-MARK",
                        "-D PREROUTING -j SHOAL-IPVS-MARK", "-F SHOAL-IPVS-MARK",
                        "-X SHOAL-IPVS-MARK", "COMMIT", "*nat",
                        "-D POSTROUTING -j SHOAL-IPVS-MASQ", "-F SHOAL-IPVS-MASQ",
                        "-X SHOAL-IPVS-MASQ", "COMMIT"]
    assert ipvs_netfilter.render_iptables_teardown("*mangle\nCOMMIT\n*nat\nCOMMIT\n") == ""


def test_nftables_companion_change_is_elements_only() -> None:
    assert ipvs_netfilter.render_nft_change() == ""
    script = ipvs_netfilter.render_nft_change(
        vips_added=[ipaddress.IPv4Address("10.254.0.6")],
        vips_removed=[ipaddress.IPv4Address("10.254.0.5")],
        ports_added=[("udp", 30053)], ports_removed=[("tcp", 30080)])
    mark = ipvs_netfilter.fwmark_for("udp", 30053)
    assert script.splitlines() == [
        "delete element ip shoal_ipvs vips { 10.254.0.5 }",
        "add element ip shoal_ipvs vips { 10.254.0.6 }",
        "delete element ip shoal_ipvs fwmarks { tcp . 30080 }",
        f"add element ip shoal_ipvs fwmarks {{ udp . 30053 : {mark:#x} }}",
    ]
    # A VIP on a port that is also published stays with its VIP service.
    assert "ip daddr != @vips meta mark set meta l4proto . th dport map @fwmarks" in \
        ipvs_netfilter.render_nft([])


def test_companions_mark_whole_vips() -> None:
    vip = ipaddress.IPv4Address("10.254.0.10")
    whole = VirtualService.make(str(vip), 0, "udp", ["10.1.1.2:0"])
    mesh = VirtualService.make(None, 30080, "udp", ["10.1.1.2:53"])
    lines = ipvs_netfilter.render_iptables([whole, mesh]).splitlines()
    rule = ("-A SHOAL-IPVS-MARK -d 10.254.0.10/32 -p udp -j MARK --set-xmark "
            "0x3afe000a/0xffffffff")
    published = next(i for i, ln in enumerate(lines) if "--dport 30080" in ln)
    # Last, so the VIP's mark wins on a port that is also published (MARK goes on).
    assert lines.index(rule) > published

    script = ipvs_netfilter.render_nft([whole, mesh])
    assert "map vipmarks { type ipv4_addr . inet_proto : mark; }" in script
    assert "meta mark set ip daddr . meta l4proto map @vipmarks;" in script
    assert "add element ip shoal_ipvs vipmarks { 10.254.0.10 . udp : 0x3afe000a }" in script
    assert "vips { 10.254.0.10 }" in script  # masqueraded like every VIP
    change = ipvs_netfilter.render_nft_change(marks_added=[(vip, "tcp")],
                                       marks_removed=[(vip, "udp")])
    assert change.splitlines() == [
        "delete element ip shoal_ipvs vipmarks { 10.254.0.10 . udp }",
        "add element ip shoal_ipvs vipmarks { 10.254.0.10 . tcp : 0x32fe000a }"]


def test_nftables_companion_elements_and_their_drift() -> None:
    web = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:8080"])
    whole = VirtualService.make("10.254.0.7", 0, "udp", ["10.0.9.11:0"])
    mesh = VirtualService.make(None, 30080, "tcp", ["10.255.0.5:80"])
    want = ipvs_netfilter.nft_elements([web, whole, mesh])
    assert set(want["vips"]) == {bytes([10, 254, 0, 5]), bytes([10, 254, 0, 7])}
    # proto . port, each padded to 4 bytes; the mark a host-order u32.
    assert want["fwmarks"] == {bytes([6, 0, 0, 0, 0x75, 0x80, 0, 0]): struct.pack(
        "=I", ipvs_netfilter.fwmark_for("tcp", 30080))}
    assert ipvs_netfilter.nft_element_drift(want, want) == []
    have = {name: dict(items) for name, items in want.items()}
    del have["vips"][bytes([10, 254, 0, 5])]
    have["vipmarks"][bytes([192, 0, 2, 9, 6, 0, 0, 0])] = struct.pack("=I", 5)
    assert ipvs_netfilter.nft_element_drift(want, have) == [
        "restored 1 element(s) of set vips of table ip shoal_ipvs: 10.254.0.5",
        "removed 1 stray element(s) from set vipmarks of table ip shoal_ipvs: "
        "192.0.2.9 . tcp"]
