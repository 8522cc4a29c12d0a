"""Finalizers: how a controller gets to clean up before an object disappears.

``store.delete`` on an object with finalizers only sets ``deletionTimestamp``; each owner
of a finalizer does its clean-up and removes its entry, and the write removing the last
one deletes the object (see ``Store.update``). Both helpers re-read and retry on
conflict, so concurrent finalizer owners never drop each other's entries.
"""

from __future__ import annotations

from shoal.crds import kinds, resource
from shoal.runtime import cas
from shoal.store import client


def has_finalizer(obj: resource.Resource, finalizer: str) -> bool:
    return finalizer in obj.metadata.finalizers


def is_deleting(obj: resource.Resource) -> bool:
    """True once deletion was requested and the object only waits for its finalizers."""
    return bool(obj.metadata.deletionTimestamp)


async def add_finalizer(store: client.Store, info: kinds.KindInfo, obj: resource.Resource,
                        finalizer: str, fence: client.Fence | None = None,
                        ) -> resource.Resource | None:
    """Ensure ``finalizer`` is on ``obj``; None if the object is gone.

    Not added to an object already being deleted: like Kubernetes, a deletion in
    progress cannot be postponed by new finalizers.
    """
    def add(o: resource.Resource) -> None:
        if not o.metadata.deletionTimestamp and finalizer not in o.metadata.finalizers:
            o.metadata.finalizers.append(finalizer)
    return await cas.mutate(store, info, obj, add, fence)


async def remove_finalizer(store: client.Store, info: kinds.KindInfo, obj: resource.Resource,
                           finalizer: str, fence: client.Fence | None = None,
                           ) -> resource.Resource | None:
    """Remove ``finalizer``; removing the last one of a deleting object deletes it."""
    def remove(o: resource.Resource) -> None:
        if finalizer in o.metadata.finalizers:
            o.metadata.finalizers = [f for f in o.metadata.finalizers if f != finalizer]
    return await cas.mutate(store, info, obj, remove, fence)
