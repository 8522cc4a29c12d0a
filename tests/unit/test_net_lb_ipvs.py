"""shoal.net.lb_ipvs, its pure parts: IPVS messages and /proc/net/ip_vs read and written.
(The kernel-facing part runs under user-mode-linux in tests/e2e/test_lb_ipvs_uml.py; the
netfilter companion's scripts are tested in test_net_ipvs_netfilter.py.)"""

from __future__ import annotations

import ipaddress
import socket
import struct

from pyroute2.ipvs import IPVSDest, IPVSService
from pyroute2.netlink.generic import ipvs as genl

from shoal.net import ipvs_netfilter, ipvs_netlink, lb_ipvs
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
    assert attrs.get_attr("IPVS_SVC_ATTR_FWMARK") == ipvs_netfilter.fwmark_for("udp", 30080)
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


def test_repair_report_says_what_each_service_got() -> None:
    svc = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:80", "10.0.9.11:80"])
    drifted = {(int(ipaddress.IPv4Address("10.0.9.10")), 80): 3,
               (int(ipaddress.IPv4Address("10.0.9.12")), 80): 0}
    gone = lb_ipvs.service_id((ipaddress.IPv4Address("10.254.0.9"), 81, "tcp"))
    commands = [ipvs_netlink.del_service(gone), *lb_ipvs.service_commands(svc, drifted),
                *lb_ipvs.service_commands(VirtualService.make(None, 30080, "tcp",
                                                              ["10.0.9.10:80"]), None)]
    assert lb_ipvs.describe_commands(commands) == [
        "IPVS 10.254.0.5:80/6: 1 real server(s) switched to masquerading; "
        "1 stray real server(s) removed; 1 real server(s) restored",
        "IPVS 10.254.0.9:81/6: service is not in the model: deleted",
        f"IPVS fwmark {ipvs_netfilter.fwmark_for('tcp', 30080):#x}: service was missing: "
        "added; 1 real server(s) restored"]
    many = [c for i in range(30) for c in lb_ipvs.service_commands(VirtualService.make(
        f"10.254.1.{i + 1}", 80, "tcp", ["10.0.9.10:80"]), None)]
    assert lb_ipvs.describe_commands(many) == [
        "repaired 30 IPVS services (60 commands): 10.254.1.10:80/6, 10.254.1.11:80/6, "
        "10.254.1.12:80/6 (+27 more)"]


def test_acks_are_matched_by_sequence() -> None:
    def ack(seq: int, error: int) -> bytes:
        return struct.pack("=IHHIIi", 36, ipvs_netlink.NLMSG_ERROR, 0, seq, 0, error) + \
            struct.pack("=IHHII", 16, 0x22, 5, seq, 0)
    data = ack(1, 0) + ack(2, -17) + ack(3, -3)
    assert list(ipvs_netlink.parse_acks(data)) == [(1, 0), (2, 17), (3, 3)]


def test_whole_vip_is_a_fwmark_service_with_port_0_real_servers() -> None:
    vip = ipaddress.IPv4Address("10.254.0.10")  # 0x0afe000a
    tcp = VirtualService.make(str(vip), 0, "tcp", ["10.1.1.2:0", "10.1.3.2:0"])
    assert ipvs_netfilter.fwmark_for_vip(vip, "tcp") == 0x32FE000A
    assert ipvs_netfilter.fwmark_for_vip(vip, "udp") == 0x3AFE000A
    # Masqueraded (the companion's postrouting bit) and never a published port's mark.
    assert ipvs_netfilter.fwmark_for_vip(vip, "tcp") & ipvs_netfilter.MASQ_MARK
    assert ipvs_netfilter.fwmark_for_vip(vip, "tcp") != ipvs_netfilter.fwmark_for("tcp", 0xA)
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


def test_ipvs_messages_masquerade_not_direct_routing() -> None:
    web = VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.10:8080"])
    fields = lb_ipvs.service_fields(web)
    assert fields == {"addr": "10.254.0.5", "port": 80, "protocol": socket.IPPROTO_TCP,
                      "sched_name": "rr"}
    attrs = dict(IPVSService(**fields).dump_nla()["attrs"])
    assert attrs["IPVS_SVC_ATTR_NETMASK"] == "255.255.255.255"
    assert attrs["IPVS_SVC_ATTR_AF"] == socket.AF_INET
    dest = dict(IPVSDest(**lb_ipvs.dest_fields(Backend.parse("10.0.9.10:8080")))
                .dump_nla()["attrs"])
    assert dest["IPVS_DEST_ATTR_FWD_METHOD"] == 0  # masquerade; pyroute2 defaults to 3
    assert dest["IPVS_DEST_ATTR_PORT"] == 8080 and dest["IPVS_DEST_ATTR_WEIGHT"] == 1


def test_ipvs_published_port_is_a_fwmark_service() -> None:
    mesh = VirtualService.make(None, 30080, "udp", ["10.255.0.5:80"])
    fields = lb_ipvs.service_fields(mesh)
    mark = ipvs_netfilter.fwmark_for("udp", 30080)
    assert fields["fwmark"] == mark and mark & ipvs_netfilter.MASQ_MARK
    attrs = dict(IPVSService(**fields).dump_nla()["attrs"])
    # The kernel refuses a new service without a netmask; pyroute2 adds none for fwmarks.
    assert attrs["IPVS_SVC_ATTR_NETMASK"] == "255.255.255.255"
    assert "IPVS_SVC_ATTR_ADDR" not in attrs
    # Ownership is read back from the mark.
    assert lb_ipvs._service_key_of({"fwmark": mark}) == (None, 30080, "udp")
    assert lb_ipvs._service_key_of({"fwmark": 0x42}) is None
    script = ipvs_netfilter.render_nft([mesh, VirtualService.make("10.254.0.5", 80, "tcp", [])])
    assert f"udp . 30080 : {mark:#x}" in script and "vips { 10.254.0.5 }" in script
