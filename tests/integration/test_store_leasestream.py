"""Lease keepalives over the hand-framed HTTP/2 stream, against a real etcd.

What a user of the agent relies on: a lease refreshed in rounds outlives its TTL, an
expired lease is reported as such (so the agent replaces it), a round bigger than one
HTTP/2 frame and one flow-control window is answered in full, and a stream that breaks
(the connection cut, etcd restarted) is replaced on the next round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shoal.store import client, etcd_server, leasestream

T = TypeVar("T")


async def test_refreshed_leases_outlive_their_ttl(store: client.Store) -> None:
    leases = [await store.grant_lease(2) for _ in range(3)]
    await store.raw_put(store.raw_key("ka", "a"), b"x", leases[0])
    stream = leasestream.KeepaliveStream(store.etcd.url)
    try:
        for _ in range(8):  # 4 s: twice the TTL
            ttls = await stream.keepalive(leases, timeout=2.0)
            assert ttls == dict.fromkeys(leases, 2)
            await asyncio.sleep(0.5)
        kvs, _, _ = await store.etcd.range(store.raw_key("ka", "a"))
        assert [kv.value for kv in kvs] == [b"x"], "the leased key must still be there"
    finally:
        await stream.close()


async def test_revoked_lease_answers_zero(store: client.Store) -> None:
    live, gone = await store.grant_lease(5), await store.grant_lease(5)
    await store.revoke_lease(gone)
    stream = leasestream.KeepaliveStream(store.etcd.url)
    try:
        assert await stream.keepalive([live, gone], timeout=2.0) == {live: 5, gone: 0}
    finally:
        await stream.close()


async def test_a_round_larger_than_a_frame_and_a_window_is_answered(
        store: client.Store) -> None:
    # ~15 bytes a request: 5,000 of them are ~75 KB, over HTTP/2's 16 KB default frame
    # and 64 KB default window, so the round goes out as etcd opens the window.
    # (Granted and revoked a few dozen at a time: thousands of lease writes at once make
    # etcd answer "too many requests" while it applies them.)
    limit = asyncio.Semaphore(32)

    async def bounded(call: Callable[[], Awaitable[T]]) -> T:
        async with limit:
            return await call()

    leases = list(await asyncio.gather(*(bounded(lambda: store.grant_lease(30))
                                         for _ in range(5000))))
    assert len(b"".join(leasestream.frame(lease) for lease in leases)) > 65_535
    stream = leasestream.KeepaliveStream(store.etcd.url)
    try:
        for _ in range(2):
            ttls = await stream.keepalive(leases, timeout=10.0)
            assert sum(1 for t in ttls.values() if t == 30) == len(leases)
    finally:
        await stream.close()
        await asyncio.gather(*(bounded(lambda lease=lease: store.revoke_lease(lease))
                               for lease in leases))


async def test_a_cut_connection_is_replaced_on_the_next_round(store: client.Store) -> None:
    lease = await store.grant_lease(5)
    stream = leasestream.KeepaliveStream(store.etcd.url)
    try:
        assert await stream.keepalive([lease], timeout=2.0) == {lease: 5}
        live = stream._stream
        assert live is not None
        live.writer.transport.abort()  # as if the connection died under us
        assert await stream.keepalive([lease], timeout=2.0) == {lease: 5}
        assert stream._stream is not live, "a new connection carries the round"
    finally:
        await stream.close()


async def test_survives_an_etcd_restart(
        etcd_factory: Callable[[], etcd_server.EtcdServer]) -> None:
    server = etcd_factory()
    store = await client.Store.connect(server.url, prefix="/ka")
    stream = leasestream.KeepaliveStream(server.url)
    try:
        lease = await store.grant_lease(10)
        assert await stream.keepalive([lease], timeout=2.0) == {lease: 10}
        server.kill()
        assert await stream.keepalive([lease], timeout=1.0) == {lease: None}
        server.start()
        # Leases survive an etcd restart (it re-arms them with their full TTL).
        assert await stream.keepalive([lease], timeout=5.0) == {lease: 10}
    finally:
        await stream.close()
        await store.close()
