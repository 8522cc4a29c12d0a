"""Shared informers: one list+watch cache per kind per process, with change handlers.

Every controller in a process that cares about a kind reads the same in-memory copy
(``SharedInformerFactory``), so N controllers cost one etcd watch, not N. The cache is
fed by :func:`shoal.store.watch.watch_kind`, which already resumes after disconnects;
when it reports a RESET (first list, or re-list after compaction) the cache is swapped
for the fresh list and handlers get synthetic add/update/delete calls for exactly the
differences, so consumers never have to know a reset happened.

Ingest is the hot path (tens of thousands of objects per second at start-up), so per
event the informer does a dict update, a counter add and the handler calls — nothing else.
Cached objects are shared, not copied: treat them as read-only (``deepcopy`` to change).

A consumer that reads a few fields of a kind with very many objects can keep only those:
:class:`KeptInformer` caches ``keep(obj)`` (an immutable, comparable value, or None for
"not kept") instead of the object. A node's dataplane follows every task of the cluster
and reads five fields of each; a cached Resource costs ~2.5 KB, what it reads ~0.3 KB.
Both share one list+watch machinery (:class:`_Follower`): resuming, RESET diffs, metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

from shoal.crds import kinds, resource, selectors
from shoal.runtime import logging as rt_logging
from shoal.runtime import metrics
from shoal.store import client, watch

log = rt_logging.get_logger("shoal.runtime.informer")

AddHandler = Callable[[resource.Resource], None]
UpdateHandler = Callable[[resource.Resource, resource.Resource], None]
DeleteHandler = Callable[[resource.Resource], None]
CacheKey = tuple[str | None, str]  # (namespace or None for cluster-scoped kinds, name)
V = TypeVar("V")
K = TypeVar("K", bound=Hashable)
#: A KeptInformer's handler: (key, value before or None, value after or None).
ChangeHandler = Callable[[CacheKey, K | None, K | None], None]


class _Follower(Generic[V]):
    """List+watch of one kind (optionally one namespace) into ``_cache``, values of type
    ``V``; subclasses say what is kept of an object and whom they tell."""

    def __init__(self, store: client.Store, info: kinds.KindInfo,
                 namespace: str | None = None) -> None:
        self.store = store
        self.info = info
        self.namespace = namespace
        self._cache: dict[CacheKey, V] = {}
        self._revision = 0
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._m_added = metrics.INFORMER_EVENTS.labels(info.plural, "added")
        self._m_modified = metrics.INFORMER_EVENTS.labels(info.plural, "modified")
        self._m_deleted = metrics.INFORMER_EVENTS.labels(info.plural, "deleted")
        self._m_reset = metrics.INFORMER_EVENTS.labels(info.plural, "reset")
        # Events counted here and added to the Prometheus counters once per burst: a
        # counter increment takes a lock, and a busy task cache applies 10,000+ events/s.
        self._unreported = [0, 0, 0]  # added, modified, deleted
        self._report_scheduled = False
        metrics.INFORMER_OBJECTS.labels(info.plural).set_function(lambda: len(self._cache))

    def _call(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            # A broken handler must not stop the cache (every other consumer relies on it).
            log.exception("informer handler failed", kind=self.info.plural)

    # --- lifecycle ---

    def start(self) -> None:
        """Start (or resume, from the last revision seen) list+watch in a background task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"informer:{self.info.plural}")

    async def stop(self) -> None:
        """Stop watching; the cache and ``last_revision`` stay, ``start`` resumes from there."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                async for event in watch.watch_kind(self.store, self.info, self.namespace,
                                                    since_revision=self._revision):
                    self._apply(event)
                    delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                # watch_kind retries etcd trouble itself; anything reaching here is a bug
                # or an undecodable value. Resume from the last good revision, slowly.
                log.exception("informer watch failed; resuming", kind=self.info.plural,
                              revision=self._revision, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _apply(self, event: watch.WatchEvent) -> None:
        etype = event.type
        if etype == watch.RESET:
            self._reset(event.objects)
            self._m_reset.inc()
            self._revision = event.revision
            self._synced.set()
            return
        obj = event.obj
        if obj is None:
            return
        meta = obj.metadata
        key = (meta.namespace, meta.name)
        if not self._report_scheduled:
            self._report_scheduled = True
            asyncio.get_running_loop().call_soon(self._report_counts)
        if etype == watch.DELETED:
            old = self._cache.pop(key, None)
            self._unreported[2] += 1
            if old is not None:
                self._tell(key, old, None)
        else:
            kept = self._kept(obj)
            # Decide add vs update from the cache, not the event type: the cache is
            # what handlers were told about before.
            if kept is None:
                old = self._cache.pop(key, None)
            else:
                old = self._cache.get(key)
                self._cache[key] = kept
            self._unreported[0 if old is None else 1] += 1
            if old is not None or kept is not None:
                self._tell(key, old, kept)
        self._revision = event.revision

    def _kept(self, obj: resource.Resource) -> V | None:
        try:
            return self._keep(obj)
        except Exception:
            # A value the consumer's projection cannot read must not stop the watch (it
            # would resume at the same event for ever): kept as absent, and said so.
            log.exception("informer cannot keep an object; ignored", kind=self.info.plural,
                          key=f"{obj.metadata.namespace}/{obj.metadata.name}")
            return None

    def _keep(self, obj: resource.Resource) -> V | None:
        """What the cache keeps of ``obj``; None: nothing (as if it did not exist)."""
        raise NotImplementedError

    def _same(self, old: V, new: V) -> bool:
        """Whether a re-list's ``new`` is what handlers were already told of as ``old``."""
        raise NotImplementedError

    def _tell(self, key: CacheKey, old: V | None, new: V | None) -> None:
        """Tell the handlers: added (old None), updated, or deleted (new None)."""
        raise NotImplementedError

    def _report_counts(self) -> None:
        self._report_scheduled = False
        added, modified, deleted = self._unreported
        self._unreported = [0, 0, 0]
        for counter, n in ((self._m_added, added), (self._m_modified, modified),
                           (self._m_deleted, deleted)):
            if n:
                counter.inc(n)

    def _reset(self, objects: list[resource.Resource]) -> None:
        fresh: dict[CacheKey, V] = {}
        self._keep_into(fresh, objects)
        self._swap(fresh)

    def _keep_into(self, fresh: dict[CacheKey, V], objects: list[resource.Resource]
                   ) -> None:
        for o in objects:
            kept = self._kept(o)
            if kept is not None:
                fresh[(o.metadata.namespace, o.metadata.name)] = kept

    def _swap(self, fresh: dict[CacheKey, V]) -> None:
        """A fresh list in place of the cache; handlers told exactly the differences."""
        old_cache, self._cache = self._cache, fresh
        for key, new in fresh.items():
            old = old_cache.get(key)
            if old is None or not self._same(old, new):
                self._tell(key, old, new)
        for key, old in old_cache.items():
            if key not in fresh:
                self._tell(key, old, None)

    # --- state ---

    @property
    def has_synced(self) -> bool:
        """True once the first full list is in the cache (and handlers have seen it)."""
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Wait for the first full list; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            await self._synced.wait()

    @property
    def last_revision(self) -> int:
        """The etcd revision the cache reflects (everything up to it has been applied)."""
        return self._revision

    # --- reads ---

    def get(self, name: str, namespace: str | None = None) -> V | None:
        """The cached value, or None. Namespaced kinds default to namespace ``default``."""
        if self.info.namespaced:
            return self._cache.get((namespace or resource.DEFAULT_NAMESPACE, name))
        return self._cache.get((None, name))

    def keys(self) -> Iterator[CacheKey]:
        return iter(list(self._cache))

    def __len__(self) -> int:
        return len(self._cache)


class Informer(_Follower[resource.Resource]):
    """A watched, in-memory copy of every object of one kind (optionally one namespace)."""

    def __init__(self, store: client.Store, info: kinds.KindInfo,
                 namespace: str | None = None) -> None:
        super().__init__(store, info, namespace)
        self._on_add: list[AddHandler] = []
        self._on_update: list[UpdateHandler] = []
        self._on_delete: list[DeleteHandler] = []

    # --- handlers ---

    def add_handlers(self, on_add: AddHandler | None = None,
                     on_update: UpdateHandler | None = None,
                     on_delete: DeleteHandler | None = None) -> Callable[[], None]:
        """Register change handlers; returns a function that unregisters them.

        Handlers run synchronously on the event loop for every change, so they must be
        quick (a controller's only enqueues a key). A handler added after the cache has
        synced is first called with ``on_add`` for every cached object, so late
        subscribers see the same picture as early ones.
        """
        if on_add is not None:
            self._on_add.append(on_add)
            if self._synced.is_set():
                for obj in list(self._cache.values()):
                    self._call(on_add, obj)
        if on_update is not None:
            self._on_update.append(on_update)
        if on_delete is not None:
            self._on_delete.append(on_delete)

        def remove() -> None:
            for handlers, handler in ((self._on_add, on_add), (self._on_update, on_update),
                                      (self._on_delete, on_delete)):
                if handler is not None and handler in handlers:
                    handlers.remove(handler)  # type: ignore[arg-type]
        return remove

    def _kept(self, obj: resource.Resource) -> resource.Resource:
        return obj  # the object itself, on the hot path: no projection that could fail

    def _same(self, old: resource.Resource, new: resource.Resource) -> bool:
        return old.metadata.resourceVersion == new.metadata.resourceVersion

    def _tell(self, key: CacheKey, old: resource.Resource | None,
              new: resource.Resource | None) -> None:
        if old is None:
            assert new is not None
            for on_add in self._on_add:
                self._call(on_add, new)
        elif new is None:
            for on_delete in self._on_delete:
                self._call(on_delete, old)
        else:
            for on_update in self._on_update:
                self._call(on_update, old, new)

    def list(self, namespace: str | None = None,
             selector: selectors.Selector | str | None = None) -> list[resource.Resource]:
        """Cached objects, optionally of one namespace and matching a label selector."""
        sel = selectors.parse(selector) if isinstance(selector, str) else selector
        out = []
        for obj in self._cache.values():
            if namespace is not None and obj.metadata.namespace != namespace:
                continue
            if sel and not sel.matches(obj.metadata.labels):
                continue
            out.append(obj)
        return out


class KeptInformer(_Follower[K]):
    """A watched cache of ``keep(obj)`` for every object of one kind, not the objects: see
    the module docstring. ``keep`` must be pure and its values immutable and comparable;
    None keeps nothing (the object is absent to readers and handlers, and one that turns
    None is a deletion to them). Handlers hear only of kept values that change: an
    update that leaves ``keep(obj)`` equal is no change to this cache's readers."""

    def __init__(self, store: client.Store, info: kinds.KindInfo,
                 keep: Callable[[resource.Resource], K | None],
                 namespace: str | None = None) -> None:
        super().__init__(store, info, namespace)
        self._keeper = keep
        self._handlers: list[ChangeHandler[K]] = []

    def add_handler(self, handler: ChangeHandler[K]) -> Callable[[], None]:
        """Register ``handler(key, old, new)`` (old None: added; new None: deleted);
        returns a function that unregisters it. Added after the cache synced, it is
        first called for every cached value, as an addition."""
        self._handlers.append(handler)
        if self._synced.is_set():
            for key, value in list(self._cache.items()):
                self._call(handler, key, None, value)

        def remove() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)
        return remove

    async def _run(self) -> None:
        # The first list page by page, each kept before the next is read: the objects
        # of a whole kind are never all decoded at once (a RESET event carries them all:
        # at 100,000 tasks a ~300 MB peak, which Python keeps as its resident size). A
        # re-list after compaction, rare, still goes through the RESET.
        delay = 0.05
        while self._revision == 0:
            try:
                fresh: dict[CacheKey, K] = {}
                revision = 0
                async for page, at in self.store.pages(self.info, self.namespace):
                    self._keep_into(fresh, page)
                    revision = at
                    del page
                    await asyncio.sleep(0)  # a page's keeping is the loop's only work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("informer list failed; retrying", kind=self.info.plural,
                              retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._swap(fresh)
            self._m_reset.inc()
            self._revision = revision
            self._synced.set()
        await super()._run()

    def _keep(self, obj: resource.Resource) -> K | None:
        return self._keeper(obj)

    def _same(self, old: K, new: K) -> bool:
        return old == new

    def _tell(self, key: CacheKey, old: K | None, new: K | None) -> None:
        if old is not None and new is not None and old == new:
            return
        for handler in self._handlers:
            self._call(handler, key, old, new)

    def items(self) -> list[tuple[CacheKey, K]]:
        return list(self._cache.items())

    def values(self) -> list[K]:
        return list(self._cache.values())


class SharedInformerFactory:
    """Hands out one :class:`Informer` per (kind, namespace) for a whole process."""

    def __init__(self, store: client.Store) -> None:
        self.store = store
        self._informers: dict[tuple[kinds.KindInfo, str | None], Informer] = {}
        self._started = False

    def informer(self, info: kinds.KindInfo, namespace: str | None = None) -> Informer:
        """The shared informer for ``info``; started at once if the factory already runs."""
        key = (info, namespace)
        informer = self._informers.get(key)
        if informer is None:
            informer = Informer(self.store, info, namespace)
            self._informers[key] = informer
            if self._started:
                informer.start()
        return informer

    def start(self) -> None:
        """Start every informer handed out so far, and any handed out later."""
        self._started = True
        for informer in self._informers.values():
            informer.start()

    async def wait_for_sync(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            for informer in list(self._informers.values()):
                await informer.wait_synced()

    async def stop(self) -> None:
        self._started = False
        for informer in self._informers.values():
            await informer.stop()

    def __iter__(self) -> Iterator[Informer]:
        return iter(list(self._informers.values()))
