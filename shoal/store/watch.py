"""A watch on one kind that survives etcd restarts and compaction.

etcd watches are cheap to resume: reopen from the last revision seen plus one, and
nothing is lost or repeated. Only when that revision has been compacted away must the
consumer start over; it then gets a RESET event holding a fresh list, which an informer
swaps in for its cache. Consumers therefore see one unbroken, ordered stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import structlog

from shoal.crds import kinds, resource
from shoal.store import client, codec, errors, etcd

log = structlog.get_logger("shoal.store.watch")

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
RESET = "RESET"

#: Events handed on between two yields to the event loop (at a revision boundary).
YIELD_EVERY = 256


@dataclasses.dataclass
class WatchEvent:
    """``obj`` is the new object (for DELETED: a stub naming it); RESET carries ``objects``."""

    type: str
    revision: int
    obj: resource.Resource | None = None
    objects: list[resource.Resource] = dataclasses.field(default_factory=list)


def stub_from_key(info: kinds.KindInfo, key: bytes, kind_prefix: bytes,
                  revision: int) -> resource.Resource:
    """The identity of a deleted object, rebuilt from its key."""
    # errors="replace": a key that is not UTF-8 (written by hand) must not stop the watch;
    # its value was never decoded into a cache either, so the delete removes nothing.
    rest = key[len(kind_prefix):].decode(errors="replace").split("/")
    name = rest[-1]
    namespace = rest[-2] if info.namespaced and len(rest) >= 2 else None
    obj = kinds.new_object_for(info, name, namespace)
    obj.metadata.resourceVersion = str(revision)
    return obj


async def watch_kind(store: client.Store, info: kinds.KindInfo, namespace: str | None = None,
                     since_revision: int = 0, max_backoff: float = 2.0,
                     ) -> AsyncIterator[WatchEvent]:
    """Events for ``info`` after ``since_revision``; with 0, starts with a RESET listing.

    Never ends on its own: connection loss is retried with backoff (resuming exactly
    where it stopped), compaction turns into a RESET. Cancel the consuming task to stop.
    """
    prefix = store.kind_prefix(info, namespace)
    # Namespaced kinds watched across all namespaces share the kind prefix; a
    # namespace filter narrows the prefix itself, so no client-side filtering is needed.
    base_prefix = store.kind_prefix(info)
    revision = since_revision
    echoes = store.echoes
    if revision == 0:
        objects, revision = await _relist(store, info, namespace, max_backoff)
        yield WatchEvent(RESET, revision, objects=objects)
        # This frame would otherwise keep the whole first list alive for as long as the
        # watch runs (100,000 tasks: ~500 MB), long after the consumer replaced them.
        objects = []
    backoff = 0.05
    while True:
        try:
            async for header_rev, raw_events in store.raw_watch(prefix, revision + 1):
                backoff = 0.05
                since_yield = 0
                for ev in raw_events:
                    # A watcher catching up gets thousands of revisions in one response;
                    # consuming them without a pause stalls the event loop for seconds
                    # (leader leases expire). Pause between revisions, never inside one,
                    # so a transaction's writes still reach the consumer together.
                    since_yield += 1
                    if since_yield > YIELD_EVERY and ev.mod_revision != revision:
                        since_yield = 0
                        await asyncio.sleep(0)
                    if ev.deleted:
                        yield WatchEvent(DELETED, ev.mod_revision,
                                         stub_from_key(info, ev.key, base_prefix, ev.mod_revision))
                    else:
                        obj = (echoes.take(ev.key, ev.value, ev.mod_revision)
                               if echoes is not None else None)
                        if obj is None:
                            obj = codec.decode_at(info, base_prefix, ev.key, ev.value,
                                                 ev.mod_revision)
                        if obj is not None:
                            kind = ADDED if ev.create_revision == ev.mod_revision else MODIFIED
                            yield WatchEvent(kind, ev.mod_revision, obj)
                    revision = ev.mod_revision
                if not raw_events:
                    # A progress notification: everything up to header_rev was delivered.
                    revision = max(revision, header_rev)
        except etcd.CompactedError as exc:
            log.info("watch revision compacted, re-listing", kind=info.plural,
                     revision=revision, compacted=exc.compact_revision)
            objects, revision = await _relist(store, info, namespace, max_backoff)
            yield WatchEvent(RESET, revision, objects=objects)
            objects = []
        except errors.UnavailableError as exc:
            log.warning("watch interrupted, resuming", kind=info.plural, revision=revision,
                        error=str(exc), retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)


async def _relist(store: client.Store, info: kinds.KindInfo, namespace: str | None,
                  max_backoff: float) -> tuple[list[resource.Resource], int]:
    backoff = 0.05
    while True:
        try:
            return await store.list(info, namespace)
        except errors.UnavailableError as exc:
            log.warning("list failed, retrying", kind=info.plural, error=str(exc),
                        retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
