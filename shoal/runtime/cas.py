"""Read-modify-write with compare-and-swap retry: the one way runtime helpers change objects.

A mutation is a function applied to a fresh copy of the object. If the write loses a
compare-and-swap race, the object is re-read and the *function* applied again, so the
change is re-derived from current state instead of clobbering someone else's write. A
mutation that changes nothing writes nothing, which is what keeps level-triggered loops
from waking themselves up forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shoal.crds import kinds, resource
from shoal.store import client, errors

Mutation = Callable[[resource.Resource], None]

MAX_ATTEMPTS = 16


async def mutate(store: client.Store, info: kinds.KindInfo, obj: resource.Resource,
                 mutation: Mutation, fence: client.Fence | None = None,
                 attempts: int = MAX_ATTEMPTS, backoff: float = 0.0,
                 ) -> resource.Resource | None:
    """Apply ``mutation`` to ``obj`` (as read, e.g. from a cache) and write it with CAS.

    Returns the stored object (``obj`` itself if nothing changed), or None if the object
    no longer exists. After ``attempts`` lost races the last ConflictError propagates
    (a reconcile then retries with backoff). FencedError always propagates at once.
    ``backoff`` > 0 waits ``backoff * 2**attempt`` seconds before each re-read (a command
    racing a writer that rewrites the object every few seconds).
    """
    current = obj
    for attempt in range(attempts):
        new = current.deepcopy()
        mutation(new)
        if new == current:
            return current
        try:
            return await store.update(info, new, fence=fence)
        except errors.FencedError:
            raise
        except errors.ConflictError:
            if attempt == attempts - 1:
                raise
            if backoff > 0:
                await asyncio.sleep(backoff * 2 ** attempt)
        try:
            current = await store.get(info, current.name, current.namespace)
        except errors.NotFoundError:
            return None
    raise AssertionError("unreachable")
