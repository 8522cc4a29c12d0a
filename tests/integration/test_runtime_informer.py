"""Shared informers against a real etcd: list+watch into the cache, handlers, RESET diffs."""

from __future__ import annotations

import time
from collections.abc import Callable

from shoal.crds import kinds, resource
from shoal.runtime import informer
from shoal.store import client, etcd, etcd_server
from tests.helpers import eventually

CONFIG = kinds.Registry.builtin().by_kind("Config")
NODE = kinds.Registry.builtin().by_kind("Node")


class Recorder:
    """Collects handler calls as ("add"|"update"|"delete", namespace/name) tuples."""

    def __init__(self, inf: informer.Informer) -> None:
        self.calls: list[tuple[str, str]] = []
        self.updates: list[tuple[str, str]] = []  # (old rv, new rv)
        inf.add_handlers(lambda o: self.calls.append(("add", self.ref(o))),
                         self.on_update,
                         lambda o: self.calls.append(("delete", self.ref(o))))

    @staticmethod
    def ref(obj: resource.Resource) -> str:
        return f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name

    def on_update(self, old: resource.Resource, new: resource.Resource) -> None:
        self.calls.append(("update", self.ref(new)))
        self.updates.append((old.metadata.resourceVersion, new.metadata.resourceVersion))


def config(name: str, data: str = "x", namespace: str = "default",
           labels: dict[str, str] | None = None) -> resource.Resource:
    return resource.new("Config", name, namespace, {"data": data}, labels)


async def test_list_then_watch_keeps_the_cache_and_handlers_in_step(
        store: client.Store) -> None:
    await store.create(CONFIG, config("pre", labels={"app": "a"}))
    await store.create(CONFIG, config("other", namespace="ns2"))
    factory = informer.SharedInformerFactory(store)
    inf = factory.informer(CONFIG)
    assert factory.informer(CONFIG) is inf, "one informer per kind per process"
    rec = Recorder(inf)
    factory.start()
    await inf.wait_synced(timeout=5)
    try:
        assert inf.has_synced
        assert sorted(rec.calls) == [("add", "default/pre"), ("add", "ns2/other")]
        assert inf.last_revision >= int(inf.get("pre").metadata.resourceVersion)  # type: ignore[union-attr]

        created = await store.create(CONFIG, config("new", labels={"app": "a"}))
        pre = await store.get(CONFIG, "pre")
        pre.spec["data"] = "changed"
        updated = await store.update(CONFIG, pre)
        await store.delete(CONFIG, "other", "ns2")

        await eventually(lambda: _async(len(rec.calls) == 5), timeout=5, what="3 more events")
        assert rec.calls[2:] == [("add", "default/new"), ("update", "default/pre"),
                                 ("delete", "ns2/other")]
        assert inf.get("new").metadata.uid == created.metadata.uid  # type: ignore[union-attr]
        assert inf.get("pre").spec == {"data": "changed"}  # type: ignore[union-attr]
        assert inf.get("other", "ns2") is None
        assert {o.name for o in inf.list(selector="app=a")} == {"pre", "new"}
        assert inf.list(namespace="ns2") == []
        assert inf.last_revision >= int(updated.metadata.resourceVersion)
        # A handler registered late first hears about everything already cached.
        late: list[str] = []
        inf.add_handlers(on_add=lambda o: late.append(o.name))
        assert sorted(late) == ["new", "pre"]
    finally:
        await factory.stop()


async def test_cluster_scoped_kinds_are_keyed_without_namespace(store: client.Store) -> None:
    await store.create(NODE, resource.new("Node", "n1", spec={}))
    inf = informer.Informer(store, NODE)
    inf.start()
    try:
        await inf.wait_synced(timeout=5)
        assert inf.get("n1") is not None
        assert list(inf.keys()) == [(None, "n1")]
    finally:
        await inf.stop()


async def test_reset_after_compaction_emits_exactly_the_differences(
        etcd_factory: Callable[[], etcd_server.EtcdServer]) -> None:
    # A private etcd: compaction is global and would disturb other tests' watches.
    server = etcd_factory()
    store = await client.Store.connect(server.url, prefix="/reset")
    try:
        for name in ("keep", "change", "gone"):
            await store.create(CONFIG, config(name))
        inf = informer.Informer(store, CONFIG)
        rec = Recorder(inf)
        inf.start()
        await inf.wait_synced(timeout=5)
        assert len(rec.calls) == 3
        rev_before = inf.last_revision

        # While the informer is stopped, change things and compact the history it
        # would need to resume, so resuming must fall back to a re-list (RESET).
        await inf.stop()
        change = await store.get(CONFIG, "change")
        change.spec["data"] = "new"
        await store.update(CONFIG, change)
        await store.delete(CONFIG, "gone")
        await store.create(CONFIG, config("added"))
        current = await store.etcd.current_revision()
        await store.etcd.compact(current)

        rec.calls.clear()
        inf.start()
        await eventually(lambda: _async(len(rec.calls) == 3), timeout=10,
                         what="synthetic events from the RESET")
        assert sorted(rec.calls) == [("add", "default/added"), ("delete", "default/gone"),
                                     ("update", "default/change")]
        assert rec.updates[-1][0] != rec.updates[-1][1]
        assert sorted(o.name for o in inf.list()) == ["added", "change", "keep"]
        assert inf.last_revision >= current > rev_before

        # And it keeps watching normally after the reset.
        await store.create(CONFIG, config("after"))
        await eventually(lambda: _async(inf.get("after") is not None), timeout=5)
        await inf.stop()
    finally:
        await store.close()


async def test_ingest_of_many_objects_is_fast(store: client.Store) -> None:
    """A sanity floor (the benchmark measures the real rate): 5,000 objects written in
    batches reach an informer with a controller-style handler at well over 5,000/s."""
    n = 5000
    inf = informer.Informer(store, CONFIG)
    seen = set()
    inf.add_handlers(on_add=lambda o: seen.add(o.name))
    inf.start()
    try:
        await inf.wait_synced(timeout=5)
        start_rev = inf.last_revision
        await inf.stop()  # so the catch-up below measures ingest, not write speed
        objs = [config(f"c{i}") for i in range(n)]
        for i in range(0, n, 127):
            await store.commit([client.Op("create", CONFIG, o) for o in objs[i:i + 127]])
        assert inf.last_revision == start_rev
        started = time.perf_counter()
        inf.start()
        await eventually(lambda: _async(len(seen) == n), timeout=20, interval=0.005)
        rate = n / (time.perf_counter() - started)
        assert rate > 5000, f"informer ingest {rate:.0f} objects/s"
    finally:
        await inf.stop()


async def _async(value: bool) -> bool:
    return value


async def test_informer_keeps_watching_after_a_key_that_is_not_utf8_is_deleted(
        store: client.Store) -> None:
    """Fuzzing found it: the delete's stub was named by decoding the key strictly, which
    raised in the watch; the informer resumed from the same revision and failed again,
    for ever, and never saw another change of the kind."""
    factory = informer.SharedInformerFactory(store)
    inf = factory.informer(CONFIG)
    factory.start()
    await inf.wait_synced(5)
    odd = store.kind_prefix(CONFIG, "default") + b"\xff\xfe"
    await store.raw_put(odd, b"not json")
    await store.etcd.txn([], [etcd.op_delete(odd)])
    await store.create(CONFIG, config("after"))

    async def seen() -> bool:
        return inf.get("after", "default") is not None
    await eventually(seen, 5, what="a config created after the odd key's delete")
    await factory.stop()


async def test_value_naming_another_object_than_its_key_is_not_cached(
        store: client.Store) -> None:
    """Fuzzing found it: a copy of config ``a``'s value under key ``b`` was cached as
    ``a`` (a second, different ``a``), and deleting key ``b`` left it there for ever."""
    await store.create(CONFIG, config("a", data="real"))
    kv = await store.raw_get(store.key(CONFIG, "a", "default"))
    assert kv is not None
    factory = informer.SharedInformerFactory(store)
    inf = factory.informer(CONFIG)
    factory.start()
    await inf.wait_synced(5)
    await store.raw_put(store.key(CONFIG, "b", "default"), kv.value.replace(b"real", b"fake"))
    await store.create(CONFIG, config("c"))

    async def c_seen() -> bool:
        return inf.get("c", "default") is not None
    await eventually(c_seen, 5, what="config c")
    assert inf.get("a", "default").spec["data"] == "real"  # type: ignore[union-attr]
    assert inf.get("b", "default") is None
    listed, _ = await store.list(CONFIG, "default")
    assert sorted(o.name for o in listed) == ["a", "c"]
    await factory.stop()


def _data(obj: resource.Resource) -> str | None:
    """A KeptInformer's ``keep``: a config's data, nothing for "skip", and a failure for
    "broken" (a value the projection cannot read)."""
    data = obj.spec.get("data")
    if data == "broken":
        raise ValueError("unreadable")
    return None if data == "skip" else str(data)


async def test_a_kept_informer_keeps_and_tells_only_what_its_projection_reads(
        etcd_factory: Callable[[], etcd_server.EtcdServer]) -> None:
    server = etcd_factory()  # private: the test compacts
    store = await client.Store.connect(server.url, prefix="/kept")
    try:
        await store.create(CONFIG, config("a", data="x"))
        await store.create(CONFIG, config("b", data="skip"))
        inf = informer.KeptInformer(store, CONFIG, _data)
        calls: list[tuple[str, str | None, str | None]] = []
        inf.add_handler(lambda key, old, new: calls.append((key[1], old, new)))
        inf.start()
        await inf.wait_synced(timeout=5)
        assert inf.items() == [(("default", "a"), "x")] and inf.get("b") is None
        assert calls == [("a", None, "x")]

        async def write(name: str, data: str, labels: dict[str, str] | None = None
                        ) -> None:
            obj = await store.get(CONFIG, name)
            obj.spec["data"] = data
            obj.metadata.labels = labels or {}
            await store.update(CONFIG, obj)

        await write("a", "x", {"other": "field"})  # what is kept is unchanged: no call
        await write("a", "y")
        await write("b", "z")  # kept from now on: an addition to readers
        await write("a", "broken")  # unreadable: absent, and the watch goes on
        await store.delete(CONFIG, "b")
        await store.create(CONFIG, config("c", data="w"))
        await eventually(lambda: _async(inf.get("c") == "w"), timeout=5, what="c kept")
        assert calls[1:] == [("a", "x", "y"), ("b", None, "z"), ("a", "y", None),
                             ("b", "z", None), ("c", None, "w")]
        assert sorted(inf.values()) == ["w"] and len(inf) == 1

        # A re-list after compaction tells exactly the differences of the kept values.
        await inf.stop()
        await write("a", "v")
        await write("c", "w", {"relabelled": "yes"})  # changed, but not what is kept
        await store.create(CONFIG, config("d", data="skip"))
        await store.etcd.compact(await store.etcd.current_revision())
        calls.clear()
        inf.start()
        await eventually(lambda: _async(inf.get("a") == "v"), timeout=10, what="reset")
        assert calls == [("a", None, "v")]
        assert sorted(inf.items()) == [(("default", "a"), "v"), (("default", "c"), "w")]
        await inf.stop()
    finally:
        await store.close()
