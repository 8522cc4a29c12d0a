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
from collections.abc import Callable, Iterator
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
        self.informers: dict[str, rt_informer.Informer] = {}
        self.interval = interval
        self.max_backlog = max_backlog
        self._dirty: dict[str, set[str]] = {}
        self._views: dict[str, Callable[[resource.Resource], views.View]] = {}
        self._removers: dict[str, Callable[[], None]] = {}
        #: Custom kinds shown, by page kind: their names and table headers (customkinds).
        self.custom: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._subscribers: set[Subscriber] = set()
        self.batches_sent = 0
        for kind, inf in informers.items():
            self.add_kind(kind, inf, views.VIEWS[kind])

    def add_kind(self, kind: str, informer: rt_informer.Informer,
                 view: Callable[[resource.Resource], views.View]) -> None:
        """Follow ``informer`` as page kind ``kind`` (again, if it was: every record is
        then sent anew, e.g. with a CRD's new printer columns)."""
        self.remove_kind(kind)
        self.informers[kind] = informer
        self._views[kind] = view
        self._dirty[kind] = set()
        # A synced informer replays its cache as adds: every record is marked to send.
        self._removers[kind] = self._watch(kind, informer)
        self._wake.set()

    def remove_kind(self, kind: str) -> None:
        remover = self._removers.pop(kind, None)
        if remover is not None:
            remover()
        self.informers.pop(kind, None)
        self._views.pop(kind, None)
        self._dirty.pop(kind, None)

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
        for kind in list(self._removers):
            self.remove_kind(kind)
        for sub in list(self._subscribers):
            sub.queue.put_nowait(None)
        self._subscribers.clear()

    # --- records ---

    def _lookup(self, kind: str, key: str) -> resource.Resource | None:
        ns, _, name = key.rpartition("/")
        return self.informers[kind].get(name, ns or None)

    def _record(self, kind: str, obj: resource.Resource) -> views.View:
        return views.safely(self._views[kind], obj)

    def snapshot(self) -> dict[str, Any]:
        """Every record by page kind, and under ``custom`` the custom kinds' tables."""
        out: dict[str, Any] = {kind: [self._record(kind, obj) for obj in inf.list()]
                               for kind, inf in self.informers.items()}
        out["custom"] = self.custom
        return out

    def publish_custom(self) -> None:
        """Tell every browser which custom kinds there are now (``custom`` event)."""
        self._fan_out(encode("custom", self.custom))

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
                    upserts.append(self._record(kind, obj))
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
        self._fan_out(encode("delta", batch))
        self.batches_sent += 1

    def _fan_out(self, message: bytes) -> None:
        for sub in list(self._subscribers):
            if not sub.push(message):
                self._subscribers.discard(sub)
                log.info("dashboard client too far behind; it will reload its snapshot")

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
