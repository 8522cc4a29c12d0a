"""A store that keeps echoes: its informers take shared writes as written, not decoded.

Against a real etcd: what the informer caches for a ``commit(share=True)`` is the very
object the commit stored, and it equals what decoding etcd's value gives; writes
without ``share``, and writes by anyone else, are decoded as always.
"""

from __future__ import annotations

from shoal.crds import kinds, resource
from shoal.runtime import informer
from shoal.store import client, codec, echo, etcd_server
from tests.helpers import eventually

CONFIG = kinds.Registry.builtin().by_kind("Config")


def config(name: str, data: str) -> resource.Resource:
    return resource.new("Config", name, "default", {"data": {"v": [data, 1, 2.5, True]}},
                        {"app": "echo"})


async def _async(value: bool) -> bool:
    return value


async def test_shared_commits_reach_the_informer_without_decoding(
        etcd: etcd_server.EtcdServer, prefix: str, store: client.Store) -> None:
    echoing = await client.Store.connect(etcd.url, prefix=prefix, echoes=True)
    factory = informer.SharedInformerFactory(echoing)
    inf = factory.informer(CONFIG)
    factory.start()
    try:
        await inf.wait_synced(timeout=5)
        assert echoing.echoes is not None
        stored = await echoing.commit(
            [client.Op("create", CONFIG, config(f"c{i}", "a")) for i in range(5)], share=True)
        plain = await echoing.commit([client.Op("create", CONFIG, config("p", "b"))])
        other = await store.create(CONFIG, config("o", "c"))  # another process's write
        await eventually(lambda: _async(len(inf) == 7), timeout=5, what="7 cached")

        for obj in stored:
            assert obj is not None
            cached = inf.get(obj.name)
            assert cached is obj, "a shared write is cached as the object written"
            got = await store.get(CONFIG, obj.name)
            assert cached.to_dict() == got.to_dict()
            assert codec.stored_spec_digest(cached) == codec.stored_spec_digest(got)
        assert inf.get("p") is not plain[0] and inf.get("o") is not other
        assert echoing.echoes.used == 5 and len(echoing.echoes) == 0

        # An update shared the same way, then one by someone else on top of it.
        first = stored[0]
        assert first is not None
        bumped = resource.Resource(first.kind, first.metadata, {"data": {"v": ["z"]}},
                                   first.status, first.apiVersion)
        [updated] = await echoing.commit([client.Op("update", CONFIG, bumped)], share=True)
        assert updated is not None
        await eventually(lambda: _async(inf.get("c0") is updated), timeout=5,
                         what="the shared update cached as written")
        assert updated.metadata.generation == 2
        again = await store.get(CONFIG, "c0")
        again.spec = {"data": {"v": ["y"]}}
        await store.update(CONFIG, again)
        await eventually(lambda: _async(inf.get("c0").spec == {"data": {"v": ["y"]}}),  # type: ignore[union-attr]
                         timeout=5, what="the foreign update decoded")
    finally:
        await factory.stop()
        await echoing.close()


def test_entries_match_by_bytes_are_used_once_and_age_out() -> None:
    clock = [100.0]
    cache = echo.EchoCache(age=2.0, clock=lambda: clock[0])
    obj = resource.new("Config", "a", "default", {})
    cache.put([(b"k", b"v1", obj)])
    assert cache.take(b"k", b"other", 6) is None and len(cache) == 1  # not ours: keep
    assert cache.take(b"k", b"v1", 7) is obj
    assert obj.metadata.resourceVersion == "7", "stamped with the event's revision"
    assert cache.take(b"k", b"v1", 7) is None, "an entry serves one echo"
    cache.put([(b"j", b"v2", obj)])
    clock[0] += 2.5
    cache.put([])  # swap: j is old now, still served
    assert len(cache) == 1
    clock[0] += 2.5
    cache.put([])  # swap again: j is gone
    assert len(cache) == 0 and cache.take(b"j", b"v2", 9) is None
