"""Leader election per controller on an etcd lease, and the fence that goes with it.

The leader is whoever created ``<prefix>/leases/controllers/<name>`` bound to its own
lease. It keeps the lease alive every ttl/3; followers watch the key and race to create it
when it disappears (lease expired or revoked). The lease id is the fence: writes made
through ``Fence(key, lease)`` only succeed while the key is still attached to that lease.

The work of a leader runs in its own task, cancelled the moment leadership is in doubt:
keepalive answers 0, keepalives stop getting through for a whole TTL, or the key is
deleted or rewritten. A clean shutdown revokes the lease so a follower takes over at
once instead of after the TTL.

Doubt is not loss. When keepalives merely went unanswered (etcd electing a new leader
takes 1-2 s, more on a loaded machine, and a TTL is only 3 s), the lease is kept, not
revoked: etcd expires leases only through its leader, and a new leader renews every
lease for a whole TTL when it takes over. The next campaign first asks etcd about that
lease; if it is alive and still holds the key, leadership resumes on it at once, with the
same fence, instead of the key lingering until the lease expires and a standby taking over
seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Coroutine
from typing import Any

from shoal.crds import resource
from shoal.runtime import events, metrics
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors, etcd

log = rt_logging.get_logger("shoal.runtime.leader")

DEFAULT_TTL = 3.0
#: Leader keys live under ``<prefix>/leases/controllers/<controller name>``.
LEASES = ("leases", "controllers")
Work = Callable[[client.Fence], Coroutine[Any, Any, None]]
# Why a leadership ended: the work crashed, the lease is known gone, or it may be.
_CRASHED, _LOST, _DOUBT = "crashed", "lost", "doubt"


#: Leadership Events being written (held so the loop does not drop them half-way).
_announcing: set[asyncio.Task[None]] = set()


class LeaderElector:
    """Campaign for controller ``name``'s lock as ``identity``; run work while holding it."""

    def __init__(self, store: client.Store, name: str, identity: str,
                 ttl: float = DEFAULT_TTL, recheck: float = 30.0) -> None:
        if ttl < 2:
            # etcd rounds shorter leases up to its minimum TTL; a smaller local TTL would
            # make the keepalive deadline (and our step-down) wrong.
            raise ValueError(f"leader lease TTL must be at least 2 s, got {ttl}")
        self.store = store
        self.name = name
        self.identity = identity
        self.ttl = ttl
        self.key = store.raw_key(*LEASES, name)
        self._recheck = recheck  # how often a quiet follower re-reads the key anyway
        self._fence: client.Fence | None = None
        # The lease of a leadership given up in doubt (keepalives unanswered), which the
        # next campaign may resume on; 0 when there is none.
        self._kept_lease = 0
        self._gauge = metrics.LEADER.labels(name, identity)
        self._gauge.set(0)

    @property
    def fence(self) -> client.Fence | None:
        """The fence of the current leadership, None while not leader."""
        return self._fence

    @property
    def is_leader(self) -> bool:
        return self._fence is not None

    async def leader_identity(self) -> str | None:
        """Who holds the lock right now, as far as etcd knows."""
        kv = await self.store.raw_get(self.key)
        return kv.value.decode() if kv is not None else None

    async def run(self, work: Work) -> None:
        """Campaign forever; while leader, run ``work(fence)``. Cancel to stop (and resign)."""
        try:
            await self._campaign(work)
        finally:
            await self.resign()  # a lease kept through doubt, on the way out

    async def _campaign(self, work: Work) -> None:
        delay = 0.1
        while True:
            try:
                fence, granted_at, revision = await self._acquire()
            except errors.UnavailableError as exc:
                log.warning("leader election: etcd unavailable", controller=self.name,
                            error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                # A lease kept through doubt must hear from us at keepalive pace, or it
                # would lapse between tries once etcd answers again.
                delay = min(delay * 2, self.ttl / 3 if self._kept_lease else self.ttl)
                continue
            delay = 0.1
            outcome = await self._lead(fence, granted_at, revision, work)
            if outcome == _CRASHED:
                # The work itself failed; leadership was handed back. Pause so a
                # deterministic crash does not spin, then campaign again.
                await asyncio.sleep(self.ttl)

    # --- campaigning ---

    async def _acquire(self) -> tuple[client.Fence, float, int]:
        loop = asyncio.get_running_loop()
        while True:
            kv = await self.store.raw_get(self.key)
            if self._kept_lease:
                resumed = await self._resume(kv)
                if resumed is not None:
                    return resumed
            if kv is not None:
                log.debug("following", controller=self.name, leader=kv.value.decode())
                await self._wait_for_release(kv.mod_revision)
                continue
            # Time taken *before* the grant: the lease can only expire later than this
            # plus the TTL, so local deadlines computed from it are conservative.
            granted_at = loop.time()
            lease = await self.store.grant_lease(math.ceil(self.ttl))
            try:
                created = await self.store.raw_create(self.key, self.identity.encode(), lease)
                mine = await self.store.raw_get(self.key) if created else None
            except BaseException:
                await self._revoke(lease)
                raise
            if mine is not None and mine.lease == lease:
                return client.Fence(self.key, lease), granted_at, mine.mod_revision
            await self._revoke(lease)  # lost the race (or lost the key already)

    async def _resume(self, kv: etcd.KV | None) -> tuple[client.Fence, float, int] | None:
        """Lead again on the lease given up in doubt, if etcd says it still holds the key."""
        lease, self._kept_lease = self._kept_lease, 0
        if kv is None or kv.lease != lease or kv.value != self.identity.encode():
            await self._revoke(lease)  # the key moved on: the old lease is of no use
            return None
        asked_at = asyncio.get_running_loop().time()
        try:
            ttl_left = await self.store.keepalive(lease)
        except errors.UnavailableError:
            self._kept_lease = lease  # still in doubt: ask again on the next round
            raise
        if ttl_left <= 0:
            return None  # expired after all: the key goes with it, campaign as usual
        log.info("leadership resumed on the lease kept through doubt", controller=self.name,
                 identity=self.identity, lease=lease)
        return client.Fence(self.key, lease), asked_at, kv.mod_revision

    async def _wait_for_release(self, revision: int) -> None:
        """Return once the key is deleted after ``revision`` (or on doubt: re-check)."""
        try:
            async with asyncio.timeout(self._recheck):
                async for _, events in self.store.raw_watch(self.key, revision + 1):
                    for ev in events:
                        if ev.key == self.key and ev.deleted:
                            return
        except TimeoutError:
            return
        except (errors.UnavailableError, etcd.CompactedError) as exc:
            log.debug("leader watch interrupted", controller=self.name, error=str(exc))
            await asyncio.sleep(0.1)

    # --- leading ---

    def _announce(self) -> None:
        """A ``LeaderElection`` Event on the controller's Lease (as Kubernetes records
        one), so ``get events -w`` shows each hand-over; best effort, beside the work."""
        lease = resource.new("Lease", self.name)

        async def record() -> None:
            try:
                await events.record_event(self.store, lease, events.NORMAL, "LeaderElection",
                                          f"{self.identity} became leader",
                                          source=self.identity)
            except errors.StoreError as exc:
                log.info("could not record event", controller=self.name, error=str(exc))

        task = asyncio.create_task(record(), name=f"leader-event:{self.name}")
        _announcing.add(task)
        task.add_done_callback(_announcing.discard)

    async def _lead(self, fence: client.Fence, granted_at: float, revision: int,
                    work: Work) -> str:
        """Run ``work`` until leadership ends; returns why (_CRASHED, _LOST, _DOUBT)."""
        self._fence = fence
        self._gauge.set(1)
        log.info("became leader", controller=self.name, identity=self.identity,
                 lease=fence.lease)
        self._announce()
        work_task = asyncio.create_task(work(fence), name=f"leader-work:{self.name}")
        guards = [
            asyncio.create_task(self._keepalive(fence.lease, granted_at)),
            asyncio.create_task(self._watch_own_key(fence, revision)),
        ]
        outcome = _LOST
        try:
            done, _ = await asyncio.wait([work_task, *guards],
                                         return_when=asyncio.FIRST_COMPLETED)
            if work_task in done:
                exc = work_task.exception()
                if exc is not None:
                    outcome = _CRASHED
                    log.error("controller crashed; resigning", controller=self.name,
                              exc_info=exc)
            else:
                keepalive = guards[0]
                if keepalive in done and keepalive.exception() is None \
                        and keepalive.result() == _DOUBT:
                    outcome = _DOUBT
                log.warning("lost leadership; stopping workers", controller=self.name,
                            identity=self.identity, in_doubt=outcome == _DOUBT)
        finally:
            # Order matters: the fence is dropped and the work cancelled before anything
            # else is awaited, so no new write starts once leadership is in doubt.
            self._fence = None
            self._gauge.set(0)
            for task in (work_task, *guards):
                task.cancel()
            await asyncio.gather(work_task, *guards, return_exceptions=True)
            if outcome == _DOUBT:
                self._kept_lease = fence.lease  # see the module doc: doubt is not loss
            else:
                await self._revoke(fence.lease)
        return outcome

    async def _keepalive(self, lease: int, last_ok: float) -> str:
        """Refresh the lease every ttl/3; return when it is gone (_LOST) or may be (_DOUBT)."""
        loop = asyncio.get_running_loop()
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            sent = loop.time()
            remaining = last_ok + self.ttl - sent
            if remaining <= 0:
                log.warning("lease not refreshed within its TTL", controller=self.name)
                return _DOUBT
            try:
                ttl_left = await asyncio.wait_for(self.store.keepalive(lease), remaining)
            except (errors.UnavailableError, TimeoutError) as exc:
                log.warning("lease keepalive failed", controller=self.name, error=str(exc))
                continue
            if ttl_left <= 0:
                log.warning("lease expired", controller=self.name, lease=lease)
                return _LOST
            last_ok = sent

    async def _watch_own_key(self, fence: client.Fence, revision: int) -> None:
        """Return as soon as the lock key is deleted or rewritten by anyone."""
        start = revision + 1
        while True:
            try:
                async for _, events in self.store.raw_watch(self.key, start):
                    for ev in events:
                        if ev.key == self.key:
                            return
                        start = ev.mod_revision + 1
            except (errors.UnavailableError, etcd.CompactedError):
                await asyncio.sleep(0.1)
                try:
                    kv = await self.store.raw_get(self.key)
                except errors.UnavailableError:
                    continue  # the keepalive deadline decides if this lasts too long
                if kv is None or kv.lease != fence.lease:
                    return
                start = kv.mod_revision + 1

    async def resign(self) -> None:
        """Give up a lease kept through doubt (on shutdown; leading ends by cancelling)."""
        lease, self._kept_lease = self._kept_lease, 0
        if lease:
            await self._revoke(lease)

    async def _revoke(self, lease: int) -> None:
        with contextlib.suppress(errors.StoreError, TimeoutError):
            await asyncio.wait_for(self.store.revoke_lease(lease), 2.0)
