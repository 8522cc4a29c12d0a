"""The store against a real etcd: CRUD, compare-and-swap, finalizers, batches, watches."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import Callable

import pytest

from shoal.crds import kinds, resource
from shoal.store import client, errors, etcd, etcd_server, watch
from tests.helpers import eventually

WIDGET = kinds.KindInfo("Widget", "widgets", "widget", ("wd",), builtin=False,
                        group="example.com")
CLUSTER_THING = kinds.KindInfo("Thing", "things", "thing", namespaced=False)


def widget(name: str, namespace: str | None = None, **spec: object) -> resource.Resource:
    return resource.new("Widget", name, namespace, spec=dict(spec), labels={"app": name[:1]})


async def test_create_get_and_duplicate(store: client.Store) -> None:
    made = await store.create(WIDGET, widget("a", size=1))
    assert made.metadata.uid and made.metadata.generation == 1
    assert made.metadata.namespace == "default"
    assert made.apiVersion == "example.com/v1"
    got = await store.get(WIDGET, "a")
    assert got.spec == {"size": 1}
    assert got.metadata.resourceVersion == made.metadata.resourceVersion
    with pytest.raises(errors.AlreadyExistsError, match="widgets/default/a already exists"):
        await store.create(WIDGET, widget("a"))
    with pytest.raises(errors.NotFoundError, match="widgets/default/zz not found"):
        await store.get(WIDGET, "zz")


async def test_cluster_scoped_key_has_no_namespace(store: client.Store) -> None:
    made = await store.create(CLUSTER_THING, resource.new("Thing", "t1", "ignored"))
    assert made.metadata.namespace is None
    assert store.key(CLUSTER_THING, "t1") == f"{store.prefix}/registry/things/t1".encode()
    assert (await store.get(CLUSTER_THING, "t1")).name == "t1"


async def test_update_is_compare_and_swap(store: client.Store) -> None:
    first = await store.create(WIDGET, widget("a", size=1))
    copy_a, copy_b = first.deepcopy(), first.deepcopy()
    copy_a.spec["size"] = 2
    updated = await store.update(WIDGET, copy_a)
    assert int(updated.metadata.resourceVersion) > int(first.metadata.resourceVersion)
    copy_b.spec["size"] = 3
    with pytest.raises(errors.ConflictError, match="is stale"):
        await store.update(WIDGET, copy_b)
    assert (await store.get(WIDGET, "a")).spec["size"] == 2


async def test_generation_bumps_only_on_spec_change(store: client.Store) -> None:
    obj = await store.create(WIDGET, widget("a", size=1))
    obj.status["ready"] = True
    obj = await store.update(WIDGET, obj)
    obj.metadata.labels["x"] = "y"
    obj = await store.update(WIDGET, obj)
    assert obj.metadata.generation == 1
    obj.spec["size"] = 5
    obj = await store.update(WIDGET, obj)
    assert obj.metadata.generation == 2
    assert (await store.get(WIDGET, "a")).metadata.generation == 2


async def test_list_by_namespace_selector_and_revision(store: client.Store) -> None:
    for name, ns in (("a1", "x"), ("a2", "y"), ("b1", "x")):
        await store.create(WIDGET, widget(name, ns))
    everything, rev = await store.list(WIDGET)
    assert sorted(o.name for o in everything) == ["a1", "a2", "b1"]
    in_x, _ = await store.list(WIDGET, namespace="x")
    assert sorted(o.name for o in in_x) == ["a1", "b1"]
    labelled, _ = await store.list(WIDGET, selector="app=a")
    assert sorted(o.name for o in labelled) == ["a1", "a2"]
    await store.create(WIDGET, widget("a3", "x"))
    then, _ = await store.list(WIDGET, revision=rev)
    assert len(then) == 3, "a list pinned to a revision must not see later writes"


async def test_list_pages_through_large_ranges(store: client.Store) -> None:
    ops = [client.Op("create", WIDGET, widget(f"w{i:04d}")) for i in range(120)]
    await store.commit(ops)
    objs, revision = await store.list(WIDGET, page_size=50)
    assert len(objs) == 120 and len({o.name for o in objs}) == 120
    # The same snapshot page by page, for a consumer that keeps little of each object;
    # a write meanwhile is not in it.
    pages = []
    async for page, at in store.pages(WIDGET, page_size=50):
        pages.append(([o.name for o in page], at))
        if len(pages) == 1:
            await store.create(WIDGET, widget("w9999"))
    assert [len(names) for names, _ in pages] == [50, 50, 20]
    assert {at for _, at in pages} == {revision}
    assert sorted(n for names, _ in pages for n in names) == sorted(o.name for o in objs)


async def test_finalizers_delay_deletion(store: client.Store) -> None:
    obj = widget("a")
    obj.metadata.finalizers = ["example.com/cleanup"]
    await store.create(WIDGET, obj)
    pending = await store.delete(WIDGET, "a")
    assert pending is not None and pending.metadata.deletionTimestamp
    still = await store.get(WIDGET, "a")
    assert still.metadata.deletionTimestamp
    still.metadata.finalizers = []
    await store.update(WIDGET, still)  # last finalizer removed: the object goes
    with pytest.raises(errors.NotFoundError):
        await store.get(WIDGET, "a")
    await store.create(WIDGET, widget("b"))
    assert await store.delete(WIDGET, "b") is None
    with pytest.raises(errors.NotFoundError):
        await store.delete(WIDGET, "b")


async def test_batch_commit_is_all_or_nothing(store: client.Store) -> None:
    await store.create(WIDGET, widget("exists"))
    ops = [client.Op("create", WIDGET, widget("new1")), client.Op("create", WIDGET,
                                                                  widget("exists"))]
    with pytest.raises(errors.ConflictError):
        await store.commit(ops)
    with pytest.raises(errors.NotFoundError):
        await store.get(WIDGET, "new1")
    with pytest.raises(ValueError, match="at most 128"):
        await store.commit([client.Op("create", WIDGET, widget(f"x{i}")) for i in range(129)])


async def test_fenced_write_refused_after_lease_loss(store: client.Store) -> None:
    lease = await store.grant_lease(5)
    key = store.raw_key("leases", "controllers", "test")
    assert await store.raw_create(key, b"me", lease)
    fence = client.Fence(key, lease)
    await store.create(WIDGET, widget("a"), fence=fence)
    await store.revoke_lease(lease)
    with pytest.raises(errors.FencedError, match="no longer held"):
        await store.create(WIDGET, widget("b"), fence=fence)
    with pytest.raises(errors.NotFoundError):
        await store.get(WIDGET, "b")


async def test_unreachable_etcd_says_where_and_how() -> None:
    port = etcd_server.free_port()
    with pytest.raises(errors.UnavailableError) as info:
        await client.Store.connect(f"http://127.0.0.1:{port}", timeout=1.0)
    assert f"127.0.0.1:{port}" in str(info.value) and "swctl up" in str(info.value)


async def _collect(events: list[watch.WatchEvent], it: object) -> None:
    async for ev in it:  # type: ignore[attr-defined]
        events.append(ev)


def _names(events: list[watch.WatchEvent], kind: str) -> list[str]:
    return [e.obj.name for e in events if e.type == kind and e.obj is not None]


async def test_watch_streams_changes(store: client.Store) -> None:
    await store.create(WIDGET, widget("before"))
    events: list[watch.WatchEvent] = []
    task = asyncio.create_task(_collect(events, watch.watch_kind(store, WIDGET)))
    try:
        await eventually(lambda: _async(bool(events)), what="initial list")
        assert events[0].type == watch.RESET and [o.name for o in events[0].objects] == ["before"]
        obj = await store.create(WIDGET, widget("a"))
        obj.spec["n"] = 1
        await store.update(WIDGET, obj)
        await store.delete(WIDGET, "a")
        await eventually(lambda: _async(len(events) >= 4), what="three events")
        assert [e.type for e in events[1:4]] == [watch.ADDED, watch.MODIFIED, watch.DELETED]
        deleted = events[3].obj
        assert deleted is not None and deleted.name == "a" and deleted.namespace == "default"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _async(value: object) -> object:
    return value


async def test_watch_resumes_after_etcd_restart(
        etcd_factory: Callable[[], etcd_server.EtcdServer], prefix: str) -> None:
    server = etcd_factory()
    store = await client.Store.connect(server.url, prefix=prefix)
    events: list[watch.WatchEvent] = []
    task = asyncio.create_task(_collect(events, watch.watch_kind(store, WIDGET)))
    try:
        await eventually(lambda: _async(bool(events)), what="initial list")
        await store.create(WIDGET, widget("one"))
        await eventually(lambda: _async("one" in _names(events, watch.ADDED)))
        server.kill()  # mid-watch: the stream breaks
        # Writes made while the watcher is disconnected must still reach it, once.
        server.start()
        writer = await client.Store.connect(server.url, prefix=prefix)
        await writer.create(WIDGET, widget("two"))
        await writer.create(WIDGET, widget("three"))
        await writer.close()
        await eventually(lambda: _async(len(_names(events, watch.ADDED)) >= 3), timeout=20,
                         what="events written during the outage")
        assert _names(events, watch.ADDED) == ["one", "two", "three"]
        assert not [e for e in events[1:] if e.type == watch.RESET], "resume needs no re-list"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def test_watch_relists_after_compaction(
        etcd_factory: Callable[[], etcd_server.EtcdServer], prefix: str) -> None:
    server = etcd_factory()
    store = await client.Store.connect(server.url, prefix=prefix)
    await store.create(WIDGET, widget("gone"))
    _, rev = await store.list(WIDGET)
    await store.delete(WIDGET, "gone")
    await store.create(WIDGET, widget("kept"))
    await store.etcd.compact(await store.etcd.current_revision())
    events: list[watch.WatchEvent] = []
    # Resuming from a compacted revision: the watcher must re-list and report a reset.
    task = asyncio.create_task(_collect(events, watch.watch_kind(store, WIDGET,
                                                                 since_revision=rev)))
    try:
        await eventually(lambda: _async(any(e.type == watch.RESET for e in events)),
                         what="a RESET after compaction")
        reset = next(e for e in events if e.type == watch.RESET)
        assert [o.name for o in reset.objects] == ["kept"]
        await store.create(WIDGET, widget("later"))
        await eventually(lambda: _async("later" in _names(events, watch.ADDED)))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def test_group_commit_keeps_per_write_semantics(store: client.Store) -> None:
    objs = [await store.create(WIDGET, widget(f"g{i}")) for i in range(20)]
    stale = objs[7].deepcopy()
    objs[7].spec["n"] = "first"
    objs[7] = await store.update(WIDGET, objs[7])
    before = store._group.transactions
    for obj in objs:
        obj.spec["n"] = "batch"
    stale.spec["n"] = "stale"
    # 20 fresh updates plus one stale one, issued concurrently: they share a transaction,
    # the stale compare fails it, and the fallback must fail only the stale write.
    results = await asyncio.gather(*(store.update(WIDGET, o) for o in objs),
                                   store.update(WIDGET, stale), return_exceptions=True)
    assert all(isinstance(r, resource.Resource) for r in results[:20])
    assert isinstance(results[20], errors.ConflictError)
    assert store._group.transactions > before, "concurrent writes were not grouped"
    stored, _ = await store.list(WIDGET)
    assert {o.spec.get("n") for o in stored if o.name.startswith("g")} == {"batch"}


async def test_garbage_in_etcd_is_skipped_not_fatal(store: client.Store) -> None:
    await store.create(WIDGET, widget("good"))
    bad_key = store.key(WIDGET, "bad")
    await store.raw_put(bad_key, b"{not json")
    await store.raw_put(store.key(WIDGET, "bad2"), b'{"metadata": {"name": "bad2"}, "spec": 5}')
    objs, _ = await store.list(WIDGET)
    assert [o.name for o in objs] == ["good"]
    with pytest.raises(errors.CorruptObjectError, match="delete it and apply it again"):
        await store.get(WIDGET, "bad")
    events: list[watch.WatchEvent] = []
    task = asyncio.create_task(_collect(events, watch.watch_kind(store, WIDGET)))
    try:
        await eventually(lambda: _async(bool(events)), what="initial list")
        await store.raw_put(bad_key, b"[1, 2]")
        await store.create(WIDGET, widget("after"))
        await eventually(lambda: _async("after" in _names(events, watch.ADDED)),
                         what="a good object after a bad one")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await store.delete(WIDGET, "bad") is None
    with pytest.raises(errors.NotFoundError):
        await store.get(WIDGET, "bad")


async def test_embedded_etcd_compacts_its_history(
        tmp_path: pathlib.Path) -> None:
    """Old revisions do not pile up for good: the embedded etcd compacts periodically
    (5 minutes by default; 1 s here), and a watch from before that is told to re-list."""
    server = etcd_server.EtcdServer(tmp_path / "data", compaction_retention="1s")
    server.start()
    store = await client.Store.connect(server.url, prefix="/compact")
    try:
        key = store.raw_key("k")
        first = await store.raw_put(key, b"1")
        for i in range(5):
            await store.raw_put(key, str(i).encode())

        async def compacted() -> bool:
            try:
                async with asyncio.timeout(1.0):
                    async for _ in store.etcd.watch_stream(key, first):
                        return False
            except etcd.CompactedError:
                return True
            except TimeoutError:
                return False
            return False

        await store.raw_put(key, b"after")  # periodic compaction needs new revisions
        await eventually(compacted, 20, what="history before the write compacted")
    finally:
        await store.close()
        server.kill()


class _LostAnswers(etcd.EtcdClient):
    """A real client whose next ``lose`` transactions are applied by etcd but answered
    with the error a member dying mid-call gives: the ambiguous write of a failover."""

    lose = 0

    async def txn(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        result = await super().txn(compares, success, failure)
        if self.lose:
            self.lose -= 1
            raise errors.UnavailableError(self.url, "unavailable: member died")
        return result


async def test_ambiguous_write_is_retried_once_and_reported_as_what_happened(
        etcd: etcd_server.EtcdServer, prefix: str) -> None:
    lossy = _LostAnswers(etcd.url)
    await lossy.connect()
    s = client.Store(lossy, prefix)
    try:
        lossy.lose = 1
        made = await s.create(WIDGET, widget("a", size=1))  # applied, answer lost: success
        stored = await s.get(WIDGET, "a")
        assert stored.metadata.uid == made.metadata.uid
        assert made.metadata.resourceVersion == stored.metadata.resourceVersion
        rival = stored.deepcopy()
        rival.spec["size"] = 2
        await s.update(WIDGET, rival)
        mine = stored.deepcopy()
        mine.spec["size"] = 3
        lossy.lose = 1  # a stale update whose retry fails: someone else wrote, not us
        with pytest.raises(errors.ConflictError):
            await s.update(WIDGET, mine)
        assert (await s.get(WIDGET, "a")).spec["size"] == 2
    finally:
        await s.close()


async def test_external_etcd_with_default_limits_gets_the_flag_named(
        tmp_path: pathlib.Path) -> None:
    # An etcd Shoal did not start keeps etcd's default --max-txn-ops (128); a batch with
    # its projections goes past it. The refusal must name the flag, and come at once:
    # it is no outage to retry through.
    server = etcd_server.EtcdServer(tmp_path / "data", max_txn_ops=128)
    server.start()
    try:
        store = await client.Store.connect(server.url, prefix="/limits")
        try:
            ops = [etcd.op_put(f"/limits/k{i}".encode(), b"v") for i in range(200)]
            with pytest.raises(errors.LimitError, match=r"--max-txn-ops 1024") as info:
                await store.txn([], ops)
            assert "too many operations in txn request" in str(info.value)
            kvs, _ = await store.raw_list(b"/limits/")
            assert kvs == []
        finally:
            await store.close()
    finally:
        server.stop()
