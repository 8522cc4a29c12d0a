"""The reconcile contract and the controller that drives it.

A controller owns one primary kind. Whatever happens — an object of that kind changes,
an object it owns changes, a timer fires, the process restarts — the controller only
learns *which* object to look at (its key, ``namespace/name``) and calls::

    async def reconcile(ctx: Context, key: str) -> Result | None

which reads the current state (``ctx.get()``), compares it with what it should be, and
closes the gap. Because it is level-triggered, the same call is correct after a missed
event, a crash or a duplicate, which is why keys (not events) are queued.

An exception is logged with ``controller`` and ``key`` and the key is retried with
backoff; it never stops the workers. ``Result(requeue_after=s)`` asks for another look
in ``s`` seconds, ``Result(requeue=True)`` for one after the key's backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from shoal.crds import kinds, resource
from shoal.runtime import clock as clock_mod
from shoal.runtime import (
    events,
    fenced,
    finalizers,
    metrics,
    ratelimit,
    status,
    workqueue,
)
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors

log = rt_logging.get_logger("shoal.runtime.reconcile")


@dataclasses.dataclass(frozen=True)
class Result:
    """What to do with the key after a successful reconcile (default: nothing more)."""

    requeue: bool = False
    requeue_after: float | None = None


Reconciler = Callable[["Context", str], Awaitable[Result | None]]
Mapper = Callable[[resource.Resource], Iterable[str]]


def object_key(obj: resource.Resource) -> str:
    """The work-queue key of an object: ``namespace/name``, or ``name`` if cluster-scoped."""
    ns = obj.metadata.namespace
    return f"{ns}/{obj.metadata.name}" if ns else obj.metadata.name


def split_key(key: str) -> tuple[str | None, str]:
    """``namespace/name`` -> (namespace, name); ``name`` -> (None, name)."""
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, ns)


def owner_mapper(owner: kinds.KindInfo) -> Mapper:
    """Map an owned object to the keys of its owners of kind ``owner`` (ownerReferences)."""
    def mapper(obj: resource.Resource) -> list[str]:
        keys = []
        for ref in obj.metadata.ownerReferences:
            if ref.get("kind") == owner.kind and ref.get("name"):
                if owner.namespaced:
                    ns = obj.metadata.namespace or resource.DEFAULT_NAMESPACE
                    keys.append(f"{ns}/{ref['name']}")
                else:
                    keys.append(str(ref["name"]))
        return keys
    return mapper


@dataclasses.dataclass(frozen=True)
class Watch:
    """A secondary kind whose changes re-queue primary keys (default: via ownerReferences)."""

    info: kinds.KindInfo
    mapper: Mapper | None = None


@dataclasses.dataclass(frozen=True)
class ControllerSpec:
    """A controller described by kind *names*, resolved when the kind is registered.

    ``kind``, ``owns`` and the kinds in ``watches`` accept any name a kind answers to
    (``greetings``, ``greeting``, ``gr``, ``Greeting``), so a spec can be written before
    its CustomResourceDefinition is applied; the manager waits for it.
    """

    name: str
    kind: str
    reconcile: Reconciler
    workers: int = 1
    owns: tuple[str, ...] = ()
    watches: tuple[tuple[str, Mapper], ...] = ()
    namespace: str | None = None
    leader_election: bool = True


@dataclasses.dataclass
class Context:
    """Everything one reconcile call needs. ``store`` writes are fenced while leading."""

    controller: str
    key: str
    namespace: str | None
    name: str
    info: kinds.KindInfo
    store: client.Store
    fence: client.Fence | None
    informer: informer_mod.Informer
    informers: informer_mod.SharedInformerFactory
    log: Any

    def get(self) -> resource.Resource | None:
        """The object from the shared cache (None if deleted). Read-only: deepcopy to edit."""
        return self.informer.get(self.name, self.namespace)

    async def fetch(self) -> resource.Resource | None:
        """The object straight from etcd, for when the cache may be behind."""
        try:
            return await self.store.get(self.info, self.name, self.namespace)
        except errors.NotFoundError:
            return None

    async def update_status(self, obj: resource.Resource,
                            mutate: Callable[[resource.Resource], None] | None = None, *,
                            patch: Mapping[str, Any] | None = None,
                            conditions: Iterable[status.Condition] = (),
                            observed_generation: bool = True) -> resource.Resource | None:
        """:func:`shoal.runtime.status.update_status` on this controller's kind, fenced."""
        return await status.update_status(self.store, self.info, obj, mutate, patch=patch,
                                          conditions=conditions,
                                          observed_generation=observed_generation)

    async def add_finalizer(self, obj: resource.Resource,
                            finalizer: str) -> resource.Resource | None:
        return await finalizers.add_finalizer(self.store, self.info, obj, finalizer)

    async def remove_finalizer(self, obj: resource.Resource,
                               finalizer: str) -> resource.Resource | None:
        return await finalizers.remove_finalizer(self.store, self.info, obj, finalizer)

    async def record_event(self, obj: resource.Resource, type_: str, reason: str,
                           message: str) -> resource.Resource:
        return await events.record_event(self.store, obj, type_, reason, message,
                                         source=self.controller)


class Controller:
    """N workers reconciling keys of one kind, fed by shared informers.

    Informer handlers are registered at construction but only enqueue while
    :meth:`run` is active (i.e. while leading): a follower keeps warm caches and no
    queue. Each run starts by queueing every cached object, so nothing that changed
    while another process led — or while nobody did — is missed.
    """

    def __init__(self, name: str, store: client.Store,
                 informers: informer_mod.SharedInformerFactory, info: kinds.KindInfo,
                 reconciler: Reconciler, *, workers: int = 1, watches: Sequence[Watch] = (),
                 namespace: str | None = None,
                 rate_limiter: Callable[[], ratelimit.RateLimiter] | None = None,
                 clock: clock_mod.Clock | None = None) -> None:
        if workers < 1:
            raise ValueError(f"controller {name} needs at least one worker, got {workers}")
        self.name = name
        self.store = store
        self.info = info
        self.informers = informers
        self.reconciler = reconciler
        self.workers = workers
        self.namespace = namespace
        self._rate_limiter = rate_limiter
        self._clock = clock
        self._queue: workqueue.WorkQueue | None = None
        self._log = log.bind(controller=name)
        self.informer = informers.informer(info, namespace)
        self._watched: list[informer_mod.Informer] = []
        self.informer.add_handlers(self._enqueue_obj, self._enqueue_update, self._enqueue_obj)
        for w in watches:
            inf = informers.informer(w.info, namespace)
            self._watched.append(inf)
            mapper = w.mapper or owner_mapper(info)
            inf.add_handlers(self._mapped(mapper), self._mapped_update(mapper),
                             self._mapped(mapper))
        self._depth = metrics.QUEUE_DEPTH.labels(name)
        self._retries = metrics.QUEUE_RETRIES.labels(name)
        self._duration = metrics.RECONCILE_DURATION.labels(name)
        self._errors = metrics.RECONCILE_ERRORS.labels(name)
        self._outcomes = {o: metrics.RECONCILE_TOTAL.labels(name, o)
                          for o in ("success", "requeue", "error", "conflict", "fenced")}

    # --- informer handlers (hot path: enqueue only) ---

    def _enqueue_obj(self, obj: resource.Resource) -> None:
        queue = self._queue
        if queue is not None:
            queue.add(object_key(obj))

    def _enqueue_update(self, old: resource.Resource, new: resource.Resource) -> None:
        queue = self._queue
        if queue is not None:
            queue.add(object_key(new))

    def _mapped(self, mapper: Mapper) -> Callable[[resource.Resource], None]:
        def handler(obj: resource.Resource) -> None:
            queue = self._queue
            if queue is not None:
                for key in mapper(obj):
                    queue.add(key)
        return handler

    def _mapped_update(self, mapper: Mapper,
                       ) -> Callable[[resource.Resource, resource.Resource], None]:
        def handler(old: resource.Resource, new: resource.Resource) -> None:
            queue = self._queue
            if queue is not None:
                # Both: an object that changed owner must wake the old owner too.
                for key in {*mapper(old), *mapper(new)}:
                    queue.add(key)
        return handler

    # --- running ---

    @property
    def queue(self) -> workqueue.WorkQueue | None:
        """The active queue (None unless :meth:`run` is running)."""
        return self._queue

    def enqueue(self, key: str, after: float = 0.0) -> None:
        """Ask for a reconcile of ``key`` (dropped when not running: a run re-lists all)."""
        queue = self._queue
        if queue is not None:
            queue.add_after(key, after)

    async def run(self, fence: client.Fence | None = None) -> None:
        """Reconcile until cancelled. Pass the leadership fence to fence every write."""
        limiter = self._rate_limiter() if self._rate_limiter else None
        queue = workqueue.WorkQueue(self.name, limiter, self._clock)
        # Read at scrape time: no per-add cost on the ingest path.
        self._depth.set_function(lambda: len(queue))
        store = fenced.fenced(self.store, fence)
        workers: list[asyncio.Task[None]] = []
        self._queue = queue
        try:
            self.informers.start()
            for inf in (self.informer, *self._watched):
                await inf.wait_synced()
            for ns, name in self.informer.keys():
                queue.add(f"{ns}/{name}" if ns else name)
            self._log.info("controller started", kind=self.info.plural, workers=self.workers,
                           objects=len(self.informer))
            workers = [asyncio.create_task(self._worker(queue, store, fence),
                                           name=f"worker:{self.name}:{i}")
                       for i in range(self.workers)]
            await asyncio.gather(*workers)
        finally:
            self._queue = None
            queue.shutdown()
            self._depth.set_function(lambda: 0)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._log.info("controller stopped")

    async def _worker(self, queue: workqueue.WorkQueue, store: client.Store,
                      fence: client.Fence | None) -> None:
        while (key := await queue.get()) is not None:
            try:
                with rt_logging.reconcile_context(self.name, key):
                    await self._reconcile_one(queue, store, fence, key)
            finally:
                queue.done(key)

    async def _reconcile_one(self, queue: workqueue.WorkQueue, store: client.Store,
                             fence: client.Fence | None, key: str) -> None:
        namespace, name = split_key(key)
        ctx = Context(controller=self.name, key=key, namespace=namespace, name=name,
                      info=self.info, store=store, fence=fence, informer=self.informer,
                      informers=self.informers,
                      log=log.bind(controller=self.name, key=key))
        started = time.perf_counter()
        try:
            result = await self.reconciler(ctx, key)
        except asyncio.CancelledError:
            raise
        except errors.FencedError as exc:
            # Leadership is gone; the elector is about to cancel us. Keep the key so a
            # worker that somehow survives still gets to it.
            ctx.log.warning("write refused: no longer leader", error=str(exc))
            self._outcomes["fenced"].inc()
            queue.add_rate_limited(key)
        except errors.ConflictError as exc:
            # Routine under concurrency: the cache was behind. Retry soon, quietly.
            ctx.log.info("conflict; retrying", error=str(exc),
                         retries=queue.num_requeues(key))
            self._outcomes["conflict"].inc()
            self._retries.inc()
            queue.add_rate_limited(key)
        except Exception as exc:
            ctx.log.exception("reconcile failed; retrying with backoff",
                              retries=queue.num_requeues(key))
            self._outcomes["error"].inc()
            self._errors.inc()
            self._retries.inc()
            queue.add_rate_limited(key)
            await self._report_failure(ctx, exc)
        else:
            ctx.log.debug("reconciled", result=result,
                          duration=round(time.perf_counter() - started, 6))
            if result is None or (not result.requeue and result.requeue_after is None):
                queue.forget(key)
                self._outcomes["success"].inc()
            elif result.requeue_after is not None:
                queue.forget(key)
                queue.add_after(key, result.requeue_after)
                self._outcomes["requeue"].inc()
            else:
                queue.add_rate_limited(key)
                self._outcomes["requeue"].inc()
        finally:
            self._duration.observe(time.perf_counter() - started)

    async def _report_failure(self, ctx: Context, exc: Exception) -> None:
        """Leave a Warning event on the object, so ``swctl describe`` shows why it is stuck.

        Identical failures bump one event's count (retries are backed off, so this is
        bounded); a failure to record is only logged — the retry matters, not the note.
        """
        obj = ctx.get()
        if obj is None:
            return
        try:
            await events.record_event(self.store, obj, events.WARNING, "ReconcileError",
                                      f"{type(exc).__name__}: {exc}"[:1000], source=self.name)
        except Exception as err:
            ctx.log.debug("could not record failure event", error=str(err))
