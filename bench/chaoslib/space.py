"""The ``etcd-full`` fault: etcd out of space (its NOSPACE alarm), held, then freed.

Only with ``--etcd-quota MIB``: the harness's etcd members then run with that small
``--quota-backend-bytes`` (and the controller-managers are told it through
``$SHOAL_ETCD_QUOTA_BYTES``), so a few dozen junk writes fill it. The junk goes under
``JUNK``, outside Shoal's prefix, as a foreign tool sharing the etcd would write it, a
new key each time: live data, which compaction cannot free, so the outage lasts the
whole hold instead of ending at the maintenance loop's first compaction. A defragment
may still get the file under the quota (it measures the file, free pages included);
the filler then fills again, so etcd stays full until put back. Putting it back deletes
the junk (etcd accepts deletes while full) and leaves the rest to Shoal: the
controller-managers' maintenance loop compacts, defragments and disarms, and the
fault's recovery is timed from the delete as for every other kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import structlog

from shoal.pki.bundle import Bundle
from shoal.store import errors, etcd, maintenance

log = structlog.get_logger("bench.chaos.space")

JUNK = b"/junk/chaos-full/"
VALUE = 1024 * 1024


async def writable_after(urls: str, bundle: Bundle, since: float, limit: float) -> float | None:
    """Seconds from ``since`` (monotonic) until etcd has no NOSPACE alarm left, polled
    every 0.1 s; None if it still had one after ``limit`` seconds."""
    client = etcd.EtcdClient(urls, bundle)
    try:
        await client.connect(timeout=10.0)
        while time.monotonic() - since < limit:
            with contextlib.suppress(errors.UnavailableError):
                if not await maintenance.no_space_alarms(client):
                    return time.monotonic() - since
            await asyncio.sleep(0.1)
        return None
    finally:
        await client.close()


class Filler:
    """Keeps etcd full from ``start`` until ``stop`` (which deletes the junk)."""

    def __init__(self, urls: str, bundle: Bundle) -> None:
        self.urls = urls
        self.bundle = bundle
        self.client: etcd.EtcdClient | None = None
        self.written = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.client = etcd.EtcdClient(self.urls, self.bundle)
        await self.client.connect(timeout=10.0)
        await self._fill()  # full before the hold starts
        self._task = asyncio.create_task(self._keep_full())

    async def _fill(self) -> None:
        assert self.client is not None
        junk = os.urandom(VALUE)
        while True:
            try:
                await self.client.put(JUNK + f"{self.written:06}".encode(), junk)
            except errors.NoSpaceError:
                return
            except errors.UnavailableError:
                await asyncio.sleep(0.2)  # a member fault at the same time: go on
                continue
            self.written += 1

    async def _keep_full(self) -> None:
        assert self.client is not None
        while True:
            await asyncio.sleep(0.5)
            try:
                if not await maintenance.no_space_alarms(self.client):
                    await self._fill()
            except errors.UnavailableError:
                continue

    async def stop(self) -> None:
        """Delete the junk; Shoal's maintenance loop is left to recover."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is None:
            return
        try:
            for _ in range(100):
                try:
                    await self.client.delete_prefix(JUNK)
                    break
                except errors.UnavailableError:
                    await asyncio.sleep(0.2)
            log.info("etcd-full: junk deleted", values=self.written)
        finally:
            await self.client.close()
