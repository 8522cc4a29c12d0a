"""The ``changes()`` feed of a driver: task uids fanned out to every subscriber.

Each real driver learns of changes its own way (dockerd's event stream, the process
shim's exit datagrams) but hands them on the same way: every caller of ``changes()`` gets
its own queue, fed from the event loop, and removed when the caller stops iterating. The
task manager is the only subscriber in production; tests add more. A feed only says
*which* task changed, never how: the subscriber observes the task again (level-triggered),
so a dropped or repeated uid costs a look, never a wrong state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable


class ChangeFeed:
    """Subscribers' queues; ``publish`` is called on the event loop's thread."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[str]] = set()

    def publish(self, uid: str) -> None:
        for queue in self._queues:
            queue.put_nowait(uid)

    async def follow(self, start: Callable[[], None]) -> AsyncIterator[str]:
        """Yield uids as they are published; ``start()`` (idempotent) makes sure the
        driver's source of events runs once someone listens."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queues.add(queue)
        start()
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
