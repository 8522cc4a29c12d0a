"""Transactions are built from plain tuples; the request sent must be exactly the one the
protobuf messages would have made, field by field."""

from __future__ import annotations

import aetcd.rpc as rpc
import pytest

from shoal.store import etcd


def _expected() -> bytes:
    eq = rpc.Compare.CompareResult.EQUAL
    target = rpc.Compare.CompareTarget
    req = rpc.TxnRequest(
        compare=[rpc.Compare(key=b"/a", target=target.MOD, result=eq, mod_revision=7),
                 rpc.Compare(key=b"/b", target=target.CREATE, result=eq, create_revision=0),
                 rpc.Compare(key=b"/lock", target=target.LEASE, result=eq, lease=99)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=b"/a", value=b"v1")),
                 rpc.RequestOp(request_put=rpc.PutRequest(key=b"/b", value=b"v2", lease=5)),
                 rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=b"/c"))],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=b"/a"))])
    return bytes(req.SerializeToString(deterministic=True))


def test_txn_request_matches_the_protobuf_built_one() -> None:
    req = etcd.txn_request(
        [etcd.cmp_mod(b"/a", 7), etcd.cmp_absent(b"/b"), etcd.cmp_lease(b"/lock", 99)],
        [etcd.op_put(b"/a", b"v1"), etcd.op_put(b"/b", b"v2", lease=5),
         etcd.op_delete(b"/c")],
        [etcd.op_get(b"/a")])
    assert req.SerializeToString(deterministic=True) == _expected()


def test_an_empty_transaction_is_an_empty_request() -> None:
    assert etcd.txn_request([], []).SerializeToString() == b""


def test_endpoints_are_a_comma_separated_list_of_one_scheme() -> None:
    eps = etcd.parse_endpoints("http://10.0.0.1:2379, http://10.0.0.2:2380,10.0.0.3")
    assert [ep.url for ep in eps] == ["http://10.0.0.1:2379", "http://10.0.0.2:2380",
                                      "http://10.0.0.3:2379"]
    assert etcd.parse_url("http://10.0.0.1:2379,http://10.0.0.2:2379") == ("10.0.0.1", 2379)
    with pytest.raises(ValueError, match="mix http and https"):
        etcd.parse_endpoints("http://a:1,https://b:2")
    with pytest.raises(ValueError, match='invalid etcd URL "ftp://a:1"'):
        etcd.parse_endpoints("ftp://a:1")
    with pytest.raises(ValueError, match="no etcd endpoint given"):
        etcd.parse_endpoints(" , ")


def test_one_channel_target_spans_every_endpoint() -> None:
    one = etcd.parse_endpoints("http://localhost:2379")
    assert etcd.grpc_target(one) == "localhost:2379"  # one endpoint: resolved by gRPC
    three = etcd.parse_endpoints("http://127.0.0.1:1,http://127.0.0.2:2,http://127.0.0.3:3")
    assert etcd.grpc_target(three) == "ipv4:127.0.0.1:1,127.0.0.2:2,127.0.0.3:3"
    v6 = etcd.parse_endpoints("http://[::1]:1,http://[fe80::1]:2")
    assert etcd.grpc_target(v6) == "ipv6:[::1]:1,[fe80::1]:2"
    with pytest.raises(ValueError, match="mix IPv4 and IPv6"):
        etcd.grpc_target(etcd.parse_endpoints("http://[::1]:1,http://127.0.0.1:2"))


def test_a_client_of_several_members_fails_over_faster_than_etcd_times_out() -> None:
    assert etcd.EtcdClient("http://127.0.0.1:2379").call_timeout == etcd.CALL_TIMEOUT
    several = etcd.EtcdClient("http://127.0.0.1:2379,http://127.0.0.2:2379")
    assert several.call_timeout == etcd.FAILOVER_CALL_TIMEOUT < etcd.CALL_TIMEOUT
    with pytest.raises(ValueError, match="is https: TLS needs the cluster CA"):
        etcd.EtcdClient("https://127.0.0.1:2379")


def test_a_member_closing_mid_handshake_is_waited_for_and_a_plain_one_is_named() -> None:
    # gRPC's words: a plain-HTTP member closes the socket on a TLS hello; a member still
    # starting closes the endpoint, which connect() waits out instead of refusing.
    prefix = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:1.2.3.4:2379: "
    assert "does not speak TLS" in etcd._tls_refusal(
        prefix + "Handshake read failed (Socket closed)", True)
    assert etcd._tls_refusal(prefix + "Handshake read failed (Endpoint closing)", True) == ""


def _member(i: int, urls: tuple[str, ...], learner: bool = False) -> etcd.Member:
    return etcd.Member(i, f"m{i}", (f"https://10.0.0.{i}:2380",), urls, learner)


def test_a_client_follows_the_voting_started_members_of_its_scheme() -> None:
    members = [
        _member(1, ("https://10.0.0.1:2379",)),
        _member(2, ("https://10.0.0.2:2379", "http://10.0.0.2:2381")),  # another scheme too
        _member(3, ()),  # added, not started yet: no client URL
        _member(4, ("https://10.0.0.4:2379",), learner=True),  # a learner serves no writes
        _member(5, ("https://10.0.0.5:2379", "https://[fd00::5]:2379")),
    ]
    got = etcd.member_endpoints(members, "https")
    assert [ep.url for ep in got] == ["https://10.0.0.1:2379", "https://10.0.0.2:2379",
                                      "https://10.0.0.5:2379", "https://[fd00::5]:2379"]
    # A member serving on several addresses is reached on the one this client was given.
    known = etcd.parse_endpoints("https://[fd00::5]:2379")
    got = etcd.member_endpoints(members, "https", known)
    assert [ep.url for ep in got][-1] == "https://[fd00::5]:2379" and len(got) == 3
