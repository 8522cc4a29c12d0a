"""The IPVS backend's pure parts: reading IPVS messages and /proc/net/ip_vs, and the
netfilter companions' scripts. (The kernel-facing part runs under user-mode-linux in
tests/e2e/test_lb_ipvs_uml.py.)"""

from __future__ import annotations

import ipaddress
import socket
import struct

from pyroute2.ipvs import IPVSDest, IPVSService
from pyroute2.netlink.generic import ipvs as genl

from shoal.net import ipvs_netlink, lb_ipvs
from shoal.net.lb import Backend, VirtualService


def decoded(service: IPVSService, dest: IPVSDest | None = None) -> genl.ipvsmsg:
    """A message as the kernel's dump would deliver it (encoded, then parsed)."""
    msg = genl.ipvsmsg()
    msg["cmd"] = genl.IPVS_CMD_NEW_DEST if dest is not None else genl.IPVS_CMD_NEW_SERVICE
    msg["version"] = genl.GENL_VERSION
    msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", service.dump_nla())]
    if dest is not None:
        msg["attrs"].append(("IPVS_CMD_ATTR_DEST", dest.dump_nla()))
    msg.encode()
    out = genl.ipvsmsg(msg.data)
    out.decode()
    return out


def test_dest_forwarding_method_is_read_from_the_kernel_attribute() -> None:
    web = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:8080"])
    service = IPVSService(**lb_ipvs.service_fields(web))
    masq = decoded(service, IPVSDest(**lb_ipvs.dest_fields(web.backends[0])))
    # pyroute2's from_message keeps its own default (3, direct routing) whatever the
    # kernel said: trusting it made every sync rewrite every real server.
    assert IPVSDest.from_message(masq)["fwd_method"] == 3
    assert lb_ipvs.dest_of_message(masq) == (Backend.parse("10.0.9.10:8080"), 0)
    routed = decoded(service, IPVSDest(addr="10.0.9.11", port=8080, fwd_method=3))
    assert lb_ipvs.dest_of_message(routed) == (Backend.parse("10.0.9.11:8080"), 3)


def test_only_shoals_services_are_owned() -> None:
    listed = ipvs_netlink.parse_proc_ip_vs(PROC_IP_VS + "FWM  00000007 rr\n"
                                           "TCP  0AFE000B:0050 rr\n")
    owned = lb_ipvs.owned_services(listed, {ipaddress.IPv4Address("10.254.0.10")})
    # 10.254.0.11 is not on the dummy device and mark 7 is not Shoal's: not ours.
    def real(text: str) -> tuple[int, int]:
        b = Backend.parse(text)
        return int(b.ip), b.port

    assert owned == {
        (ipaddress.IPv4Address("10.254.0.10"), 80, "tcp"): {
            real("10.1.3.2:8080"): 0, real("10.1.1.2:8080"): 0},
        (None, 30080, "tcp"): {real("10.1.1.2:8080"): 3},
        (ipaddress.IPv4Address("10.254.0.10"), 53, "udp"): {},
    }


PROC_IP_VS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0AFE000A:0050 rr
  -> 0A010302:1F90      Masq    1      0          0
  -> 0A010102:1F90      Masq    1      0          3
FWM  10007580 rr
  -> 0A010102:1F90      Route   1      0          0
UDP  0AFE000A:0035 rr
"""


def test_kernel_view_parses_proc_net_ip_vs() -> None:
    assert lb_ipvs.kernel_view(PROC_IP_VS) == {
        "TCP 10.254.0.10:80 rr": [("10.1.1.2:8080", "Masq", 1), ("10.1.3.2:8080", "Masq", 1)],
        "FWM 0x10007580 rr": [("10.1.1.2:8080", "Route", 1)],
        "UDP 10.254.0.10:53 rr": [],
    }


def test_iptables_companion() -> None:
    web = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:8080"])
    mesh = VirtualService.make(None, 30080, "tcp", ["10.0.9.10:8080"])
    script = lb_ipvs.render_iptables([web, mesh])
    lines = script.splitlines()
    # Our chains are declared (so restore flushes them) and the jumps added once.
    assert ":SHOAL-IPVS-MARK - [0:0]" in lines and ":SHOAL-IPVS-MASQ - [0:0]" in lines
    assert "-A PREROUTING -j SHOAL-IPVS-MARK" in lines
    assert "-A OUTPUT -j SHOAL-IPVS-MARK" in lines
    assert "-A POSTROUTING -j SHOAL-IPVS-MASQ" in lines
    # VIPs need no rule; the published port is marked for its fwmark service.
    assert "10.254.0.5" not in script
    mark = lb_ipvs.fwmark_for("tcp", 30080)
    assert (f"-A SHOAL-IPVS-MARK -p tcp -m tcp --dport 30080 -m addrtype --dst-type LOCAL "
            f"! -d 127.0.0.0/8 -j MARK --set-xmark {mark:#x}/0xffffffff") in lines
    assert ("-A SHOAL-IPVS-MASQ -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ "
            "-j MASQUERADE") in lines

    saved = ("*mangle\n:PREROUTING ACCEPT [0:0]\n:SHOAL-IPVS-MARK - [0:0]\n"
             "-A PREROUTING -j SHOAL-IPVS-MARK\n-A OUTPUT -j SHOAL-IPVS-MARK\nCOMMIT\n"
             "*nat\n:SHOAL-IPVS-MASQ - [0:0]\n-A POSTROUTING -j SHOAL-IPVS-MASQ\nCOMMIT\n")
    jumps = lb_ipvs.iptables_jumps(saved)
    assert jumps == {("mangle", "PREROUTING"), ("mangle", "OUTPUT"), ("nat", "POSTROUTING")}
    again = lb_ipvs.render_iptables([web], jumps_present=jumps)
    assert "-A PREROUTING" not in again and "-A POSTROUTING" not in again
    assert "--dport" not in again  # the published port is gone from the rewritten chain

    teardown = lb_ipvs.render_iptables_teardown(saved).splitlines()
    assert teardown == ["*mangle", "-D OUTPUT -j SHOAL-IPVS-MARK",
                        "-D PREROUTING -j SHOAL-IPVS-MARK", "-F SHOAL-IPVS-MARK",
                        "-X SHOAL-IPVS-MARK", "COMMIT", "*nat",
                        "-D POSTROUTING -j SHOAL-IPVS-MASQ", "-F SHOAL-IPVS-MASQ",
                        "-X SHOAL-IPVS-MASQ", "COMMIT"]
    assert lb_ipvs.render_iptables_teardown("*mangle\nCOMMIT\n*nat\nCOMMIT\n") == ""


def test_nftables_companion_change_is_elements_only() -> None:
    assert lb_ipvs.render_nft_change() == ""
    script = lb_ipvs.render_nft_change(
        vips_added=[ipaddress.IPv4Address("10.254.0.6")],
        vips_removed=[ipaddress.IPv4Address("10.254.0.5")],
        ports_added=[("udp", 30053)], ports_removed=[("tcp", 30080)])
    mark = lb_ipvs.fwmark_for("udp", 30053)
    assert script.splitlines() == [
        "delete element ip shoal_ipvs vips { 10.254.0.5 }",
        "add element ip shoal_ipvs vips { 10.254.0.6 }",
        "delete element ip shoal_ipvs fwmarks { tcp . 30080 }",
        f"add element ip shoal_ipvs fwmarks {{ udp . 30053 : {mark:#x} }}",
    ]
    # A VIP on a port that is also published stays with its VIP service.
    assert "ip daddr != @vips meta mark set meta l4proto . th dport map @fwmarks" in \
        lb_ipvs.render_nft([])


def test_batched_commands_decode_as_ipvs_messages() -> None:
    # What ipvs_netlink packs by hand must read back, through pyroute2's own IPVS message
    # parser, as the same service and real server.
    sid = lb_ipvs.service_id((ipaddress.IPv4Address("10.254.0.5"), 80, "tcp"))
    raw = ipvs_netlink.encode(0x22, 7, ipvs_netlink.add_dest(
        sid, ipaddress.IPv4Address("10.0.9.10"), 8080, lb_ipvs.FWD_MASQ))
    length, family, flags, seq, _ = struct.unpack_from("=IHHII", raw)
    assert (length, family, seq) == (len(raw), 0x22, 7)
    assert flags == ipvs_netlink.NLM_F_REQUEST | ipvs_netlink.NLM_F_ACK
    msg = genl.ipvsmsg(raw)
    msg.decode()
    assert msg["cmd"] == genl.IPVS_CMD_NEW_DEST
    svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert svc.get_attr("IPVS_SVC_ATTR_ADDR") == "10.254.0.5"
    assert svc.get_attr("IPVS_SVC_ATTR_PORT") == 80
    assert svc.get_attr("IPVS_SVC_ATTR_PROTOCOL") == socket.IPPROTO_TCP
    assert lb_ipvs.dest_of_message(msg) == (Backend.parse("10.0.9.10:8080"), 0)
    dest = msg.get_attr("IPVS_CMD_ATTR_DEST")
    assert dest.get_attr("IPVS_DEST_ATTR_WEIGHT") == 1
    # A new service carries everything the kernel insists on.
    mark = lb_ipvs.service_id((None, 30080, "udp"))
    new = genl.ipvsmsg(ipvs_netlink.encode(0x22, 8, ipvs_netlink.add_service(mark, "rr")))
    new.decode()
    attrs = new.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert attrs.get_attr("IPVS_SVC_ATTR_FWMARK") == lb_ipvs.fwmark_for("udp", 30080)
    assert attrs.get_attr("IPVS_SVC_ATTR_SCHED_NAME") == "rr"
    assert attrs.get_attr("IPVS_SVC_ATTR_NETMASK") == "255.255.255.255"
    assert attrs.get_attr("IPVS_SVC_ATTR_TIMEOUT") == 0
    assert attrs.get_attr("IPVS_SVC_ATTR_FLAGS") is not None


def test_service_commands_are_the_difference() -> None:
    svc = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:80", "10.0.9.11:80"])
    assert [c.cmd for c in lb_ipvs.service_commands(svc, None)] == [1, 5, 5]
    def real(text: str) -> tuple[int, int]:
        b = Backend.parse(text)
        return int(b.ip), b.port

    have = {real("10.0.9.10:80"): 0, real("10.0.9.11:80"): 0}
    assert lb_ipvs.service_commands(svc, have) == []  # idempotent: nothing to send
    drifted = {real("10.0.9.10:80"): 3, real("10.0.9.12:80"): 0}
    commands = lb_ipvs.service_commands(svc, drifted)
    assert [c.cmd for c in commands] == [ipvs_netlink.CMD_SET_DEST, ipvs_netlink.CMD_DEL_DEST,
                                         ipvs_netlink.CMD_NEW_DEST]
    assert [c.what for c in commands] == ["set 10.0.9.10:80 of 10.254.0.5:80/6",
                                          "delete 10.0.9.12:80 from 10.254.0.5:80/6",
                                          "add 10.0.9.11:80 to 10.254.0.5:80/6"]


def test_acks_are_matched_by_sequence() -> None:
    def ack(seq: int, error: int) -> bytes:
        return struct.pack("=IHHIIi", 36, ipvs_netlink.NLMSG_ERROR, 0, seq, 0, error) + \
            struct.pack("=IHHII", 16, 0x22, 5, seq, 0)
    data = ack(1, 0) + ack(2, -17) + ack(3, -3)
    assert list(ipvs_netlink.parse_acks(data)) == [(1, 0), (2, 17), (3, 3)]


def test_whole_vip_is_a_fwmark_service_with_port_0_real_servers() -> None:
    vip = ipaddress.IPv4Address("10.254.0.10")  # 0x0afe000a
    tcp = VirtualService.make(str(vip), 0, "tcp", ["10.1.1.2:0", "10.1.3.2:0"])
    assert lb_ipvs.fwmark_for_vip(vip, "tcp") == 0x32FE000A
    assert lb_ipvs.fwmark_for_vip(vip, "udp") == 0x3AFE000A
    # Masqueraded (the companion's postrouting bit) and never a published port's mark.
    assert lb_ipvs.fwmark_for_vip(vip, "tcp") & lb_ipvs.MASQ_MARK
    assert lb_ipvs.fwmark_for_vip(vip, "tcp") != lb_ipvs.fwmark_for("tcp", 0xA)
    # A fwmark service, with the netmask the kernel insists on, not a port-0 address
    # service (which IPVS would schedule only if persistent).
    assert lb_ipvs.service_fields(tcp) == {"fwmark": 0x32FE000A, "af": socket.AF_INET,
                                           "netmask": "255.255.255.255", "sched_name": "rr"}
    sid = lb_ipvs.service_id(tcp.key)
    assert (sid.addr, sid.fwmark) == (None, 0x32FE000A)
    new = genl.ipvsmsg(ipvs_netlink.encode(0x22, 9, ipvs_netlink.add_service(sid, "rr")))
    new.decode()
    attrs = new.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert attrs.get_attr("IPVS_SVC_ATTR_FWMARK") == 0x32FE000A
    assert attrs.get_attr("IPVS_SVC_ATTR_NETMASK") == "255.255.255.255"
    assert attrs.get_attr("IPVS_SVC_ATTR_ADDR") is None
    # Real servers on port 0: IPVS keeps the port the client connected to.
    commands = lb_ipvs.service_commands(tcp, None)
    assert [c.what for c in commands] == ["add service fwmark 0x32fe000a",
                                          "add 10.1.1.2:0 to fwmark 0x32fe000a",
                                          "add 10.1.3.2:0 to fwmark 0x32fe000a"]
    have = {(int(b.ip), 0): lb_ipvs.FWD_MASQ for b in tcp.backends}
    assert lb_ipvs.service_commands(tcp, have) == []  # idempotent


def test_whole_vip_services_are_owned_through_the_dummy_addresses() -> None:
    listed = ipvs_netlink.parse_proc_ip_vs(
        "FWM  32FE000A rr\n  -> 0A010102:0000      Masq    1      0          0\n"
        "FWM  3AFE000A rr\n"
        "FWM  32FE000B rr\n"  # 10.254.0.11: not on the dummy device, not ours
        "FWM  10020050 rr\n")  # neither a published port's mark nor a VIP's
    vip = ipaddress.IPv4Address("10.254.0.10")
    assert lb_ipvs.owned_services(listed, {vip}) == {
        (vip, 0, "tcp"): {(int(ipaddress.IPv4Address("10.1.1.2")), 0): 0},
        (vip, 0, "udp"): {},
    }
    assert lb_ipvs.owned_services(listed, set()) == {}
    assert lb_ipvs._service_key_of({"fwmark": 0x32FE000A}) is None  # no VIPs to match
    assert lb_ipvs.kernel_view("FWM  32FE000A rr\n  -> 0A010102:0000 Masq 1 0 0\n") == {
        "FWM 0x32fe000a rr": [("10.1.1.2:0", "Masq", 1)]}


def test_companions_mark_whole_vips() -> None:
    vip = ipaddress.IPv4Address("10.254.0.10")
    whole = VirtualService.make(str(vip), 0, "udp", ["10.1.1.2:0"])
    mesh = VirtualService.make(None, 30080, "udp", ["10.1.1.2:53"])
    lines = lb_ipvs.render_iptables([whole, mesh]).splitlines()
    rule = ("-A SHOAL-IPVS-MARK -d 10.254.0.10/32 -p udp -j MARK --set-xmark "
            "0x3afe000a/0xffffffff")
    published = next(i for i, ln in enumerate(lines) if "--dport 30080" in ln)
    # Last, so the VIP's mark wins on a port that is also published (MARK goes on).
    assert lines.index(rule) > published

    script = lb_ipvs.render_nft([whole, mesh])
    assert "map vipmarks { type ipv4_addr . inet_proto : mark; }" in script
    assert "meta mark set ip daddr . meta l4proto map @vipmarks;" in script
    assert "add element ip shoal_ipvs vipmarks { 10.254.0.10 . udp : 0x3afe000a }" in script
    assert "vips { 10.254.0.10 }" in script  # masqueraded like every VIP
    change = lb_ipvs.render_nft_change(marks_added=[(vip, "tcp")],
                                       marks_removed=[(vip, "udp")])
    assert change.splitlines() == [
        "delete element ip shoal_ipvs vipmarks { 10.254.0.10 . udp }",
        "add element ip shoal_ipvs vipmarks { 10.254.0.10 . tcp : 0x32fe000a }"]


def test_unfaithful_whole_vips_are_refused_loudly() -> None:
    import pytest
    whole = VirtualService.make("10.254.0.5", 0, "tcp", [Backend.parse("10.0.9.10:0")])
    lb_ipvs.check_supported([whole, VirtualService.make(None, 30080, "tcp", [])])  # fine
    lb_ipvs.check_supported([whole, VirtualService.make("10.254.0.5", 80, "udp", [])])
    # The fwmark service would swallow the exact port's traffic (marks are looked up
    # first), so the mix is refused rather than silently shadowed.
    with pytest.raises(lb_ipvs.UnsupportedServiceError, match=r"10.254.0.5:0/tcp next to"):
        lb_ipvs.check_supported([whole, VirtualService.make("10.254.0.5", 80, "tcp", [])])
    # VIPs differing only in their top 5 bits would share a mark.
    twin = VirtualService.make("18.254.0.5", 0, "tcp", [])
    with pytest.raises(lb_ipvs.UnsupportedServiceError, match="share mark 0x32fe0005"):
        lb_ipvs.check_supported([whole, twin])


def test_an_update_is_checked_against_the_model() -> None:
    import pytest
    lb = lb_ipvs.IpvsLoadBalancer()
    whole = VirtualService.make("10.254.0.5", 0, "tcp", [])
    exact = VirtualService.make("10.254.0.6", 80, "tcp", [])
    lb._set_model({whole.key: whole, exact.key: exact})
    lb._check_joins(VirtualService.make("10.254.0.5", 0, "tcp", ["10.0.9.10:0"]))  # same
    lb._check_joins(VirtualService.make("10.254.0.6", 0, "udp", []))
    for joining in (VirtualService.make("10.254.0.5", 80, "tcp", []),
                    VirtualService.make("10.254.0.6", 0, "tcp", []),
                    VirtualService.make("18.254.0.5", 0, "tcp", [])):
        with pytest.raises(lb_ipvs.UnsupportedServiceError):
            lb._check_joins(joining)
