"""The per-node queue of task keys a task manager reconciles.

What it guarantees: a key is queued at most once, never processed by two workers at
once, and a key added while it is being processed is processed once more afterwards (it
changed during the reconcile); ``add_after`` re-adds a key after a delay (backoff).

Why not ``shoal.runtime.workqueue.WorkQueue``: that one feeds a fixed pool of workers
through a global rate limiter, made for controllers. Here one process holds up to a
thousand nodes' queues, mostly idle, and 100,000 task starts must not be throttled, so
workers are spawned on demand and exit when the queue drains. Named for what it holds
so the two queues are never confused.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable


class TaskQueue:
    """Keys to reconcile: de-duplicated, never processed twice at once, delayed re-adds.

    Workers are spawned on demand up to ``concurrency`` and exit when the queue drains,
    so a thousand idle nodes cost no coroutines. A new worker is only spawned when the
    ones running have left keys waiting for a whole loop iteration, i.e. when their
    reconciles actually wait (a docker pull); steps that never suspend (hollow) are all
    run by one worker instead of paying for a coroutine each. A key added while it is
    being processed is processed once more afterwards (it changed during the reconcile).
    """

    def __init__(self, handler: Callable[[str], Awaitable[None]], concurrency: int) -> None:
        self._handler = handler
        self._concurrency = max(1, concurrency)
        self._ready: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._running = 0  # counted by hand: a finished worker's done-callback runs late
        self._spawn_scheduled = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, key: str) -> None:
        if self._closed:
            return
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._ready.append(key)
        self._maybe_spawn()

    def add_after(self, key: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    def _maybe_spawn(self) -> None:
        if not self._spawn_scheduled and self._running < self._concurrency:
            self._spawn_scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn)

    def _spawn(self) -> None:
        self._spawn_scheduled = False
        if self._ready and self._running < self._concurrency and not self._closed:
            self._running += 1
            worker = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        done = 0
        try:
            while self._ready and not self._closed:
                key = self._ready.popleft()
                self._queued.discard(key)
                self._active.add(key)
                if self._ready:
                    self._maybe_spawn()  # runs next iteration: only if we got stuck
                try:
                    await self._handler(key)
                finally:
                    self._active.discard(key)
                    if key in self._dirty:
                        self._dirty.discard(key)
                        self._requeue(key)
                done += 1
                if done % 64 == 0:
                    # Hollow steps never suspend; yield so heartbeats and the watch keep up.
                    await asyncio.sleep(0)
        finally:
            self._running -= 1

    def _requeue(self, key: str) -> None:
        # Called by a worker that keeps looping, so no new worker is needed.
        if key not in self._queued and not self._closed:
            self._queued.add(key)
            self._ready.append(key)

    async def close(self) -> None:
        self._closed = True
        for worker in list(self._workers):
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
