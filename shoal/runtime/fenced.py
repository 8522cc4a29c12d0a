"""A view of the store whose every write carries the current leadership fence.

Leader election alone cannot stop a paused or partitioned ex-leader from writing after
its lease expired; the fence can: each write's transaction also compares the leader key's
lease, so etcd itself refuses writes from anyone who is no longer leader
(:class:`shoal.store.errors.FencedError`). Handing reconcilers this view instead of the
plain store means they cannot forget to pass the fence.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.crds import kinds, resource
from shoal.store import client


class FencedStore(client.Store):
    """Same connection and prefix as ``base``; create/update/delete/commit are fenced."""

    def __init__(self, base: client.Store, fence: client.Fence) -> None:
        super().__init__(base.etcd, base.prefix)
        self.echoes = base.echoes  # the watches that would see the echoes are base's
        self.base = base
        self.fence = fence

    async def create(self, info: kinds.KindInfo, obj: resource.Resource,
                     fence: client.Fence | None = None, lease: int = 0) -> resource.Resource:
        return await super().create(info, obj, fence or self.fence, lease)

    async def update(self, info: kinds.KindInfo, obj: resource.Resource,
                     fence: client.Fence | None = None) -> resource.Resource:
        return await super().update(info, obj, fence or self.fence)

    async def delete(self, info: kinds.KindInfo, name: str, namespace: str | None = None,
                     fence: client.Fence | None = None) -> resource.Resource | None:
        return await super().delete(info, name, namespace, fence or self.fence)

    async def commit(self, ops: Sequence[client.Op], fence: client.Fence | None = None,
                     share: bool = False) -> list[resource.Resource | None]:
        return await super().commit(ops, fence or self.fence, share)

    async def close(self) -> None:
        """No-op: the connection belongs to the store this view was made from."""


def fenced(store: client.Store, fence: client.Fence | None) -> client.Store:
    """``store`` itself without a fence (no leader election), else a fenced view of it."""
    return store if fence is None else FencedStore(store, fence)
