"""shoal.net.nftnl: element wire layouts (as ``nft --debug=netlink`` shows nft sending
them) and the reading of error acks."""

from __future__ import annotations

import ipaddress
import struct

from shoal.net import nftnl


def ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def test_backend_element_bytes_are_nfts() -> None:
    # nft --debug=netlink: element 0500fe0a 00005000 00000001 : 0200010a 0000901f
    key = ip("10.254.0.5") + nftnl.port_bytes(80) + nftnl.index_bytes(1)
    item = nftnl.element(nftnl.LAYOUTS["be"], key, ip("10.1.0.2") + nftnl.port_bytes(8080))
    assert key.hex() == "0afe0005" "00500000" "01000000"
    assert item[:4] == struct.pack("=HH", 40, nftnl.NFTA_LIST_ELEM | nftnl.NLA_F_NESTED)
    assert nftnl.describe_element("be_tcp", item) == "10.254.0.5 . 80 . 1 : 10.1.0.2 . 8080"


def test_verdict_and_set_elements() -> None:
    key = ip("10.254.0.5") + nftnl.PROTO_BYTES["tcp"] + nftnl.port_bytes(80)
    item = nftnl.element(nftnl.LAYOUTS["svc"], key, nftnl.verdict_data("lb_tcp_2"))
    assert nftnl.describe_element("svc", item) == "10.254.0.5 . tcp . 80 : goto lb_tcp_2"
    assert nftnl.describe_element("vips", nftnl.element(nftnl.LAYOUTS["vips"],
                                                        ip("10.254.0.9"))) == "10.254.0.9"
    # A kernel dump leaves NLA_F_NESTED out of the verdict; reading normalises it.
    dumped = (struct.pack("=HH", 32, nftnl.NFTA_SET_ELEM_DATA)
              + struct.pack("=HH", 28, nftnl.NFTA_DATA_VERDICT)
              + nftnl.nla(nftnl.NFTA_VERDICT_CODE, struct.pack("!i", nftnl.NFT_GOTO))
              + nftnl.nla(nftnl.NFTA_VERDICT_CHAIN, b"lb_tcp_2\0"))
    key_attr = nftnl.nest(nftnl.NFTA_SET_ELEM_KEY, nftnl.nla(nftnl.NFTA_DATA_VALUE, key))
    assert nftnl.split_element(key_attr + dumped) == (key, nftnl.verdict_data("lb_tcp_2"))


def test_error_ack_points_at_the_refused_element() -> None:
    # nlmsghdr, error -2, the capped request header, then NLMSGERR_ATTR_OFFS = 96.
    tlv = nftnl.nla(nftnl.NLMSGERR_ATTR_OFFS, struct.pack("=I", 96))
    body = struct.pack("=i", -2) + struct.pack("=IHHII", 300, 0xA0C, 5, 7, 0) + tlv
    ack = struct.pack("=IHHII", 16 + len(body), nftnl.NLMSG_ERROR,
                      nftnl.NLM_F_ACK_TLVS | 0x100, 7, 0) + body
    assert nftnl._error_of(ack, 0, len(ack)) == (2, 96)


def test_the_inline_dump_reader_agrees_with_split_element() -> None:
    key = ip("10.254.0.5") + nftnl.PROTO_BYTES["tcp"] + nftnl.port_bytes(80)
    items = [nftnl.element(nftnl.LAYOUTS["svc"], key, nftnl.verdict_data("lb_tcp_2")),
             nftnl.element(nftnl.LAYOUTS["be"], ip("10.254.0.5") + nftnl.port_bytes(80)
                           + nftnl.index_bytes(3), ip("10.1.0.2") + nftnl.port_bytes(8080)),
             nftnl.element(nftnl.LAYOUTS["vips"], ip("10.254.0.9"))]
    out: list[tuple[bytes, bytes | None]] = []
    nftnl._read_elements(b"".join(items), out)
    assert out == [nftnl.split_element(item[4:]) for item in items]
    assert out[2] == (ip("10.254.0.9"), None)


def test_a_chain_declaration_reads_as_nft_writes_it() -> None:
    assert nftnl.ChainDecl().describe() == "a regular chain"
    assert nftnl.ChainDecl("filter", 0, -300, 1).describe() == (
        "type filter hook prerouting priority -300 policy accept")
    assert nftnl.ChainDecl("nat", 4, 100, 0).describe() == (
        "type nat hook postrouting priority 100 policy drop")
