"""Kind names to KindInfo, following CustomResourceDefinitions as they are applied.

Operators name their kinds (``"greetings"``) before anyone has to have applied the CRD;
the resolver watches CRDs through the shared informer and answers ``wait_for(name)`` as
soon as the kind exists — so an operator started before its CRD simply waits, and one
started after it starts at once.
"""

from __future__ import annotations

import asyncio

from shoal.crds import kinds, resource
from shoal.runtime import informer
from shoal.runtime import logging as rt_logging
from shoal.store import kindsync

log = rt_logging.get_logger("shoal.runtime.kindresolver")


class KindResolver:
    """The process's view of which kinds exist: built-ins plus the stored CRDs."""

    def __init__(self, informers: informer.SharedInformerFactory) -> None:
        self.registry = kinds.Registry.builtin()
        self._changed = asyncio.Event()
        self._crds = informers.informer(self.registry.by_kind(kinds.CRD_KIND))
        self._crds.add_handlers(self._on_crd, lambda _old, new: self._on_crd(new),
                                self._on_crd_deleted)

    def _on_crd(self, crd: resource.Resource) -> None:
        kindsync.add_crd(self.registry, crd.to_dict())
        # Wake every waiter, then hand later waiters a fresh event to wait on.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _on_crd_deleted(self, crd: resource.Resource) -> None:
        kind = str(((crd.spec.get("names") or {}).get("kind")) or "")
        try:
            info = self.registry.by_kind(kind)
        except kinds.UnknownKindError:
            return
        if not info.builtin:
            self.registry.remove(kind)

    def lookup(self, name: str) -> kinds.KindInfo:
        """The kind now; UnknownKindError if it is not (yet) registered."""
        return self.registry.lookup(name)

    async def wait_for(self, name: str) -> kinds.KindInfo:
        """The kind called ``name``, waiting for its CRD to be applied if need be."""
        try:
            return self.registry.lookup(name)
        except kinds.UnknownKindError:
            pass
        await self._crds.wait_synced()
        waiting_logged = False
        while True:
            changed = self._changed
            try:
                return self.registry.lookup(name)
            except kinds.UnknownKindError:
                if not waiting_logged:
                    log.info("waiting for kind to be registered by a "
                             "CustomResourceDefinition", kind=name)
                    waiting_logged = True
            await changed.wait()
