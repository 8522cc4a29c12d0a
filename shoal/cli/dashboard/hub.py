"""Informer changes, coalesced into batches, fanned out to every connected browser.

The hub registers one handler per informer that only marks ``(kind, key)`` dirty — the
informer's handlers run on its ingest path and must stay at a set insertion. A flusher
task wakes when something is dirty, waits ``interval`` more so a burst (a scale to 500,
a node drained) becomes one batch, then reads each dirty key's *current* object from the
informer: ten changes to one task in that window cost one record, and a key created and
deleted within it costs nothing but a delete the browser ignores. The batch is encoded
once and queued to every subscriber.

A subscriber gets a snapshot (every record, built from the informers' caches) and then
every batch after it. Both are taken without an await in between, so no change falls
between them; a change already in the snapshot and still dirty is sent again, which is
harmless (records are upserts). A subscriber that falls more than ``max_backlog``
batches behind is dropped rather than buffered without bound: its browser's
EventSource reconnects and starts again from a fresh snapshot.

Memory: the hub keeps no copy of the objects, only the dirty keys; records are built
when sent. CPU while idle: none (the flusher waits on an event).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, Final

import orjson

from shoal.cli.dashboard import views
from shoal.crds import resource
from shoal.runtime import informer as rt_informer
from shoal.runtime import logging as rt_logging

log = rt_logging.get_logger("shoal.cli.dashboard.hub")

DEFAULT_INTERVAL: Final = 0.05
DEFAULT_BACKLOG: Final = 256


class Subscriber:
    """One browser's stream: encoded messages waiting to be written."""

    def __init__(self, max_backlog: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.max_backlog = max_backlog
        self.dropped = False

    def push(self, message: bytes) -> bool:
        """Queue ``message``; False (and the stream is ended) when too far behind."""
        if self.queue.qsize() >= self.max_backlog:
            self.dropped = True
            self.queue.put_nowait(None)
            return False
        self.queue.put_nowait(message)
        return True


def encode(kind: str, payload: dict[str, Any]) -> bytes:
    """One server-sent event: ``event: KIND`` and the JSON on one data line."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class Hub:
    """The page's model of the cluster, fed by informers (``plural -> Informer``)."""

    def __init__(self, informers: dict[str, rt_informer.Informer],
                 interval: float = DEFAULT_INTERVAL,
                 max_backlog: int = DEFAULT_BACKLOG) -> None:
        self.informers = informers
        self.interval = interval
        self.max_backlog = max_backlog
        self._dirty: dict[str, set[str]] = {kind: set() for kind in informers}
        self._wake = asyncio.Event()
        self._subscribers: set[Subscriber] = set()
        self._removers = [self._watch(kind, inf) for kind, inf in informers.items()]
        self.batches_sent = 0

    def _watch(self, kind: str, informer: rt_informer.Informer) -> Any:
        dirty = self._dirty[kind]
        wake = self._wake

        def mark(obj: resource.Resource, *_: resource.Resource) -> None:
            dirty.add(views.key_of(obj))
            wake.set()

        def mark_update(_old: resource.Resource, new: resource.Resource) -> None:
            dirty.add(views.key_of(new))
            wake.set()
        return informer.add_handlers(on_add=mark, on_update=mark_update, on_delete=mark)

    def close(self) -> None:
        for remove in self._removers:
            remove()
        for sub in list(self._subscribers):
            sub.queue.put_nowait(None)
        self._subscribers.clear()

    # --- records ---

    def _lookup(self, kind: str, key: str) -> resource.Resource | None:
        ns, _, name = key.rpartition("/")
        return self.informers[kind].get(name, ns or None)

    def snapshot(self) -> dict[str, list[views.View]]:
        return {kind: [views.view_of(kind, obj) for obj in inf.list()]
                for kind, inf in self.informers.items()}

    def take_batch(self) -> dict[str, Any] | None:
        """The records of every dirty key as ``{kind: {"set": [...], "del": [...]}}``;
        None when nothing is dirty."""
        batch: dict[str, Any] = {}
        for kind, dirty in self._dirty.items():
            if not dirty:
                continue
            keys = list(dirty)
            dirty.clear()
            upserts, deletes = [], []
            for key in keys:
                obj = self._lookup(kind, key)
                if obj is None:
                    deletes.append(key)
                else:
                    upserts.append(views.view_of(kind, obj))
            batch[kind] = {"set": upserts, "del": deletes}
        return batch or None

    # --- subscribers ---

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscriber]:
        """A new stream whose first message is the snapshot; closed on exit."""
        sub = Subscriber(self.max_backlog)
        # No await between the snapshot and joining the fan-out: nothing falls between.
        sub.queue.put_nowait(encode("snapshot", self.snapshot()))
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, batch: dict[str, Any]) -> None:
        message = encode("delta", batch)
        for sub in list(self._subscribers):
            if not sub.push(message):
                self._subscribers.discard(sub)
                log.info("dashboard client too far behind; it will reload its snapshot")
        self.batches_sent += 1

    async def run(self) -> None:
        """Flush dirty keys to the subscribers until cancelled."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval)  # let a burst gather into one batch
            self._wake.clear()
            if not self._subscribers:  # nobody watching: a later snapshot has it all
                for dirty in self._dirty.values():
                    dirty.clear()
                continue
            batch = self.take_batch()
            if batch is not None:
                self.publish(batch)
