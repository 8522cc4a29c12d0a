"""One watch on the whole registry, every revision, kept alive through member faults.

A watch stream on a killed member breaks (UnavailableError), but one on a SIGSTOPped
member just goes quiet; so the follower connects to one endpoint at a time, and a
watchdog compares the last revision it saw with what another member says the head is:
behind for too long means a stalled stream, which is reopened on the next endpoint from
the revision after the last one applied. Nothing is skipped: a revision etcd has
compacted away is reported as a gap (``gaps``), never silently passed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import structlog

from bench.chaoslib.invariants import Checker
from shoal.pki.bundle import Bundle
from shoal.store import client, errors
from shoal.store.etcd import CompactedError, RawEvent

log = structlog.get_logger("bench.chaos.watcher")

STALL = 4.0  # seconds behind the head before a stream counts as stalled


class Follower:
    def __init__(self, endpoints: list[str], prefix: str, tls: Bundle | None,
                 checker: Checker) -> None:
        self.endpoints = endpoints
        self.prefix = prefix
        self.tls = tls
        self.checker = checker
        self.next_rev = 0
        self.gaps: list[tuple[int, int]] = []
        self.reopened = 0
        self.last_event = time.monotonic()
        self._turn = 0
        self._advanced = asyncio.Event()

    async def _connect(self) -> client.Store:
        while True:
            url = self.endpoints[self._turn % len(self.endpoints)]
            self._turn += 1
            try:
                return await client.Store.connect(url, self.prefix, timeout=3.0, tls=self.tls)
            except errors.StoreError:
                await asyncio.sleep(0.2)

    async def start(self) -> None:
        """List the registry (the starting state); ``run`` follows from there."""
        store = await self._connect()
        try:
            registry = store.raw_key("registry") + b"/"
            kvs, rev = await store.raw_list(registry)
        finally:
            await store.close()
        self.checker.apply(rev, [(kv.key.decode(), orjson.loads(kv.value)) for kv in kvs])
        self.next_rev = rev + 1

    async def run(self) -> None:
        while True:
            store = await self._connect()
            stream = asyncio.create_task(self._stream(store))
            watchdog = asyncio.create_task(self._watchdog())
            try:
                done, _ = await asyncio.wait({stream, watchdog},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if isinstance(exc, CompactedError):
                        self.gaps.append((self.next_rev, exc.compact_revision))
                        log.error("watch start compacted", wanted=self.next_rev,
                                  compacted=exc.compact_revision)
                        self.next_rev = exc.compact_revision + 1
                    elif exc is not None and not isinstance(exc, errors.StoreError):
                        raise exc
            finally:
                for task in (stream, watchdog):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, errors.StoreError,
                                             CompactedError):
                        await task
                with contextlib.suppress(Exception):
                    await store.close()
            self.reopened += 1

    async def _stream(self, store: client.Store) -> None:
        registry = store.raw_key("registry") + b"/"
        pending: list[RawEvent] = []
        async for header, events in store.raw_watch(registry, self.next_rev):
            self.last_event = time.monotonic()
            pending.extend(events)
            # A revision's events (one transaction) are applied together, then checked.
            while pending:
                rev = pending[0].mod_revision
                batch = [ev for ev in pending if ev.mod_revision == rev]
                pending = [ev for ev in pending if ev.mod_revision != rev]
                self.checker.apply(rev, [(ev.key.decode(), None if ev.deleted
                                          else orjson.loads(ev.value)) for ev in batch])
                self.next_rev = rev + 1
            self._advanced.set()
            del header

    async def head(self) -> int | None:
        """The cluster's current revision as some other member sees it."""
        for offset in range(len(self.endpoints)):
            url = self.endpoints[(self._turn + offset) % len(self.endpoints)]
            try:
                store = await client.Store.connect(url, self.prefix, timeout=2.0, tls=self.tls)
            except errors.StoreError:
                continue
            try:
                _, rev = await asyncio.wait_for(store.raw_list(store.raw_key("chaos-head")), 2.0)
                return rev
            except (errors.StoreError, TimeoutError):
                continue
            finally:
                with contextlib.suppress(Exception):
                    await store.close()
        return None

    async def _watchdog(self) -> None:
        behind_since: float | None = None
        while True:
            await asyncio.sleep(1.0)
            head = await self.head()
            if head is None or head < self.next_rev:
                behind_since = None
                continue
            now = time.monotonic()
            behind_since = behind_since or now
            if now - behind_since > STALL and now - self.last_event > STALL:
                log.warning("watch stalled; reopening", at=self.next_rev, head=head)
                return

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Until every revision up to the head (as of now) has been applied."""
        head = None
        deadline = time.monotonic() + timeout
        while head is None and time.monotonic() < deadline:
            head = await self.head()
        while head is not None and self.next_rev <= head and time.monotonic() < deadline:
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), 0.5)


def decode(value: bytes) -> Any:
    return orjson.loads(value)
