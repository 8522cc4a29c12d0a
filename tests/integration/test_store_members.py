"""A client follows its cluster's membership: members added after it started are used.

The first manager's processes are given one etcd endpoint, its own; managers join later.
Here a real cluster of one member (mutual TLS, auth on) grows to three by member add and
start, as ``swctl join`` grows it; a worker's store, holding only its least-privilege
node certificate and given only member 0's URL, must learn the two new members (etcd
answers MemberList to that user) and keep reading, writing, watching and keeping its
lease alive when member 0 is then SIGKILLed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from shoal.crds import kinds, resource
from shoal.store import client, errors, etcd, etcd_server, leasestream, projections, rbac, watch
from tests.helpers import eventually

NODES = kinds.Registry.builtin().lookup("nodes")
PREFIX = "/members"


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd_server.EtcdCluster]:
    c = etcd_server.EtcdCluster(tmp_path_factory.mktemp("etcd-grow"), 1, tls=True)
    c.start_all()
    yield c
    for m in c.members:
        m.kill()


@pytest.fixture
async def root(cluster: etcd_server.EtcdCluster) -> AsyncIterator[client.Store]:
    store = await client.Store.connect(cluster.urls, PREFIX, tls=cluster.client_bundle())
    await rbac.enable_auth(store.etcd)
    await rbac.apply_role(store.etcd, rbac.roles_for_node(PREFIX, "n1"))
    yield store
    await store.close()


async def _grow(cluster: etcd_server.EtcdCluster, root: client.Store) -> None:
    """Add one member the way ``swctl join`` does: announce it, then start it."""
    server = cluster.prepare_member()

    async def add() -> int | None:
        try:
            member_id, _ = await root.etcd.member_add([server.peer_url])
            return member_id
        except errors.UnavailableError as exc:
            # etcd refuses reconfiguration until every member has been up for 5 s.
            assert "unhealthy cluster" in str(exc)
            return None
    await eventually(add, timeout=20, interval=0.5, what=f"member add of {server.name}")
    await asyncio.to_thread(server.start)


async def test_a_client_given_one_member_moves_to_members_added_later(
        cluster: etcd_server.EtcdCluster, root: client.Store) -> None:
    first = cluster.members[0].url
    worker = await client.Store.connect(first, PREFIX,
                                        tls=cluster.client_bundle(rbac.user_name("n1")))
    stream: leasestream.KeepaliveStream | None = None
    watcher: asyncio.Task[None] | None = None
    keeper: asyncio.Task[None] | None = None
    try:
        assert [ep.url for ep in worker.etcd.endpoints] == [first]
        # What the worker does for a living: watch the Nodes (from before it learns the
        # members: the watch must survive the client moving to them), read its own keys,
        # write its reports, keep its heartbeat lease alive (on the agent's stream).
        seen: list[str] = []

        async def watching() -> None:
            async for ev in watch.watch_kind(worker, NODES):
                if ev.type == watch.RESET:  # the first list: "before" may already be in it
                    seen.extend(o.name for o in ev.objects or ())
                elif ev.type == watch.ADDED and ev.obj is not None:
                    seen.append(ev.obj.name)

        async def saw(*names: str) -> bool:
            return seen == list(names)

        watcher = asyncio.create_task(watching())
        await root.create(NODES, resource.new("Node", "before", spec={}))
        await eventually(lambda: saw("before"), timeout=10, what="the watch started")

        await _grow(cluster, root)
        await _grow(cluster, root)
        every = {m.url for m in cluster.members}

        async def learned() -> bool:
            return all({ep.url for ep in s.etcd.endpoints} == every for s in (worker, root))
        await eventually(learned, timeout=etcd.SYNC_INTERVAL + 10,
                         what="the clients using all three members")
        assert worker.etcd.call_timeout == etcd.FAILOVER_CALL_TIMEOUT
        await root.create(NODES, resource.new("Node", "moved", spec={}))
        await eventually(lambda: saw("before", "moved"), timeout=10,
                         what="the watch going on after the client moved")

        lease = await worker.grant_lease(5)
        stream = leasestream.KeepaliveStream(worker.url, worker.etcd.tls,
                                             members=lambda: worker.etcd.endpoints)
        ttls: list[tuple[float, int | None]] = []

        async def keeping_alive() -> None:
            assert stream is not None
            while True:
                got = await stream.keepalive([lease], timeout=1.0)
                ttls.append((time.monotonic(), got[lease]))
                await asyncio.sleep(0.3)

        keeper = asyncio.create_task(keeping_alive())
        own = projections.node_prefix(PREFIX, "n1") + b"secrets/default/s"
        await root.raw_put(own, b"v1")

        cluster.kill(0)  # the only member the worker was given
        killed_at = time.monotonic()
        report = f"{PREFIX}/reports/n1/default/t1".encode()
        await worker.raw_put(report, b"running")  # a write: retried onto a live member
        assert (await worker.raw_get(report)) is not None
        kv = await worker.raw_get(own)  # a read of what is its own
        assert kv is not None and kv.value == b"v1"
        for name in ("after-1", "after-2"):
            await root.create(NODES, resource.new("Node", name, spec={}))
        await eventually(lambda: saw("before", "moved", "after-1", "after-2"), timeout=15,
                         what="the watch resumed on a live member")

        async def renewed() -> bool:
            return any(ttl for at, ttl in ttls if at > killed_at + 0.5)
        await eventually(renewed, timeout=15, what="a keepalive answered by a live member")
        assert 0 not in [ttl for _, ttl in ttls], ttls  # the lease never lapsed
        # Still learning: the dead member is a member (it may come back), so it stays.
        assert {ep.url for ep in worker.etcd.endpoints} == every
    finally:
        for task in (watcher, keeper):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if stream is not None:
            await stream.close()
        await worker.close()


async def test_a_lone_member_keeps_the_address_it_was_reached_on(
        cluster: etcd_server.EtcdCluster, root: client.Store) -> None:
    """A one-member etcd may serve clients on several addresses (``swctl up``'s does, on
    the loopback and a bridge) of which a process reaches only the one it was given."""
    first = cluster.members[0].url
    moved = await root.etcd.sync_members()
    assert not moved and [ep.url for ep in root.etcd.endpoints] == [first]
