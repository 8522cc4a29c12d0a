"""Transactions are built from plain tuples; the request sent must be exactly the one the
protobuf messages would have made, field by field."""

from __future__ import annotations

import aetcd.rpc as rpc

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
