"""``shoal.store.maintenance``: which members to defragment, when to disarm, what to say;
and the store's mapping of etcd's refusal to ``NoSpaceError``."""

from __future__ import annotations

import aetcd.rpc as rpc
import grpc
import pytest
import structlog

from shoal.runtime import logging as rt_logging
from shoal.store import errors, etcd, etcd_server, maintenance

MiB = 1024 * 1024
QUOTA = 64 * MiB


def space(size: int, in_use: int, endpoint: str = "http://a:2379") -> etcd.MemberSpace:
    return etcd.MemberSpace(1, endpoint, size * MiB, in_use * MiB)


def test_disarm_only_when_every_member_is_well_below_the_quota() -> None:
    assert maintenance.should_disarm([space(20, 19), space(30, 29)], QUOTA)
    assert not maintenance.should_disarm([space(20, 19), space(63, 62)], QUOTA)
    assert not maintenance.should_disarm([], QUOTA)  # nobody answered: leave it


def test_defragment_over_the_limit_on_the_first_try_then_only_with_space_to_give() -> None:
    full = space(64, 63)  # in-use lags the compaction: it does not say yet
    assert maintenance.to_defragment(full, QUOTA, first=True)
    assert not maintenance.to_defragment(full, QUOTA, first=False)
    assert maintenance.to_defragment(space(64, 40), QUOTA, first=False)
    assert not maintenance.to_defragment(space(10, 9.5), QUOTA, first=True)  # done already


def recovery(after: list[etcd.MemberSpace], disarmed: bool) -> maintenance.Recovery:
    return maintenance.Recovery((1,), 812, (space(64, 60),), tuple(after),
                                ("http://a:2379",), QUOTA, disarmed)


def test_the_outcome_says_what_was_done_and_what_the_user_must_do() -> None:
    ok = maintenance.outcome_message(recovery([space(2, 2)], True))
    assert ok == ("etcd space recovered: compacted to revision 812, defragmented 1 "
                  "member(s); db 2.0 MiB of 64.0 MiB quota at http://a:2379; alarm "
                  "disarmed, writes accepted.")
    tight = maintenance.outcome_message(recovery([space(58, 58)], True))
    assert "Little room is left: raise --quota-backend-bytes" in tight
    stuck = maintenance.outcome_message(recovery([space(63, 63)], False))
    assert stuck.startswith("etcd is still out of space after recovery")
    assert "db 63.0 MiB of 64.0 MiB quota" in stuck
    assert "raise --quota-backend-bytes on every etcd member" in stuck
    assert "swctl etcd recover-space" in stuck


class _Refusal(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def test_etcds_refusal_becomes_no_space_error_and_writes_back_clear_it() -> None:
    client = etcd.EtcdClient("http://a:2379", auto_sync=False)
    exc = await client._fail(_Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      "etcdserver: mvcc: database space exceeded"))
    assert isinstance(exc, errors.NoSpaceError)
    assert str(exc).startswith("etcd at http://a:2379 is out of space and refuses writes")
    assert client.no_space_since
    # gRPC's own refusal of an oversized message shares the code, not the meaning.
    other = await client._fail(_Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        "Received message larger than max"))
    assert not isinstance(other, errors.NoSpaceError)
    # What tells that etcd accepts writes again: a put, a lease grant, a txn with a put.
    assert etcd._adds_data(rpc.PutRequest(key=b"k"))
    assert etcd._adds_data(rpc.LeaseGrantRequest(TTL=5))
    assert etcd._adds_data(etcd.txn_request([], [etcd.op_put(b"k", b"v")]))
    assert not etcd._adds_data(etcd.txn_request([], [etcd.op_delete(b"k")]))
    assert not etcd._adds_data(rpc.RangeRequest(key=b"k"))


def test_refusals_are_logged_once_per_call_site_until_etcd_accepts_writes() -> None:
    refused = str(errors.NoSpaceError("http://a:2379", "etcd said: database space exceeded"))

    def line(event: str, **kw: object) -> dict[str, object]:
        return {"component": "c", "event": event, **kw}

    assert rt_logging.once_per_outage(None, "warning", line("write failed", error=refused))
    with pytest.raises(structlog.DropEvent):
        rt_logging.once_per_outage(None, "warning", line("write failed", error=refused))
    assert rt_logging.once_per_outage(None, "warning", line("other site", error=refused))
    assert rt_logging.once_per_outage(None, "warning", line("write failed", error="conflict"))
    rt_logging.once_per_outage(None, "warning", line(errors.SPACE_BACK_EVENT))
    assert rt_logging.once_per_outage(None, "warning", line("write failed", error=refused))


def test_quota_is_the_environments_or_shoals_own() -> None:
    assert maintenance.quota_from_env({}) == etcd_server.QUOTA_BYTES
    assert maintenance.quota_from_env({maintenance.QUOTA_ENV: "67108864"}) == QUOTA
    with pytest.raises(ValueError, match="SHOAL_ETCD_QUOTA_BYTES=\"64M\": expected"):
        maintenance.quota_from_env({maintenance.QUOTA_ENV: "64M"})
