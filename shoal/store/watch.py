"""A watch on one kind that survives etcd restarts and compaction.

etcd watches are cheap to resume: reopen from the last revision seen plus one, and
nothing is lost or repeated. Only when that revision has been compacted away must the
consumer start over; it then gets a RESET event holding a fresh list, which an informer
swaps in for its cache. Consumers therefore see one unbroken, ordered stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

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


async def follow_prefix(store: client.Store, prefix: bytes,
                        relist: Callable[[], Awaitable[int]], *, revision: int = 0,
                        what: str, max_backoff: float = 2.0, **log_fields: object,
                        ) -> AsyncIterator[list[etcd.RawEvent]]:
    """List-then-watch of one key prefix, resumed for ever: the one loop every follower
    of etcd keys shares (informers through :func:`watch_kind`, the agent's task copies,
    the fold's reports, the nodes controller's heartbeats).

    ``relist()`` replaces the consumer's state from a fresh range read and returns its
    revision; it is called first when ``revision`` is 0 and again whenever etcd has
    compacted the revision to resume from. After each relist an empty batch is yielded,
    so a consumer that must announce the new state (a RESET) knows when; other batches
    hold the events of one watch response, in revision order. The resume point moves
    past a batch only once the consumer asks for the next one, and on the idle
    progress notifications, so a broken stream (a member died, lost its leader) resumes
    exactly after the last event handed on: nothing lost, nothing repeated. Relists and
    watches that fail are retried with a backoff doubling up to ``max_backoff``. Cancel
    the consuming task to stop.
    """
    backoff = 0.05
    while True:
        try:
            if revision == 0:
                revision = await relist()
                backoff = 0.05
                yield []
            async for header_rev, events in store.raw_watch(prefix, revision + 1):
                backoff = 0.05
                if events:
                    yield events
                    revision = events[-1].mod_revision
                else:
                    # A progress notification: everything up to header_rev was delivered.
                    revision = max(revision, header_rev)
        except etcd.CompactedError as exc:
            log.info(f"{what} revision compacted, re-listing", key=prefix.decode(),
                     revision=revision, compacted=exc.compact_revision, **log_fields)
            revision = 0
        except errors.UnavailableError as exc:
            log.warning(f"{what} interrupted, resuming", key=prefix.decode(), revision=revision,
                        error=str(exc), retry_in=backoff, **log_fields)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)


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
    echoes = store.echoes
    listed: list[resource.Resource] = []
    listed_at = 0

    async def relist() -> int:
        nonlocal listed, listed_at
        listed, listed_at = await store.list(info, namespace)
        return listed_at

    async for raw_events in follow_prefix(store, prefix, relist, revision=since_revision,
                                          what="watch", max_backoff=max_backoff,
                                          kind=info.plural):
        if not raw_events:
            objects, listed = listed, []
            # Handed over, not kept: this frame would otherwise hold the whole list for
            # as long as the watch runs (100,000 tasks: ~500 MB).
            yield WatchEvent(RESET, listed_at, objects=objects)
            del objects
            continue
        since_yield = 0
        previous = 0
        for ev in raw_events:
            # A watcher catching up gets thousands of revisions in one response;
            # consuming them without a pause stalls the event loop for seconds (leader
            # leases expire). Pause between revisions, never inside one, so a
            # transaction's writes still reach the consumer together.
            since_yield += 1
            if since_yield > YIELD_EVERY and ev.mod_revision != previous:
                since_yield = 0
                await asyncio.sleep(0)
            previous = ev.mod_revision
            if ev.deleted:
                yield WatchEvent(DELETED, ev.mod_revision,
                                 stub_from_key(info, ev.key, base_prefix, ev.mod_revision))
                continue
            obj = (echoes.take(ev.key, ev.value, ev.mod_revision)
                   if echoes is not None else None)
            if obj is None:
                obj = codec.decode_at(info, base_prefix, ev.key, ev.value,
                                     ev.mod_revision)
            if obj is not None:
                kind = ADDED if ev.create_revision == ev.mod_revision else MODIFIED
                yield WatchEvent(kind, ev.mod_revision, obj)
