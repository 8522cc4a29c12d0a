"""The work queue between informers and reconcile workers: keys, not events.

Controllers are level-triggered, so ten changes to one object before a worker gets to
it need one reconcile, not ten: a key is queued at most once (``dirty``). A key being
reconciled is never handed to a second worker; if it changes meanwhile it is queued
again when the first worker calls :meth:`WorkQueue.done`. Failures go back in through
``add_rate_limited`` (per-key exponential backoff plus a global token bucket, see
``ratelimit``) and scheduled re-checks through ``add_after``. Everything is in-memory
and rebuilt from the informer cache on start, so a killed process loses nothing.
"""

from __future__ import annotations

import asyncio
import collections

from shoal.runtime import clock as clock_mod
from shoal.runtime import ratelimit


class WorkQueue:
    """Keys waiting for a worker. Single event loop; every method but ``get`` is sync."""

    def __init__(self, name: str = "", rate_limiter: ratelimit.RateLimiter | None = None,
                 clock: clock_mod.Clock | None = None) -> None:
        self.name = name
        self._clock = clock or clock_mod.LoopClock()
        self._limiter = rate_limiter or ratelimit.default_rate_limiter(self._clock)
        self._queue: collections.deque[str] = collections.deque()
        self._dirty: set[str] = set()        # queued or waiting to be re-queued after done()
        self._processing: set[str] = set()   # handed to a worker, done() not yet called
        # Delayed keys: the earliest time each one is due, and its timer. Only the
        # earliest request counts, so a key asked to come back in 1 s and in 10 s
        # comes back once, after 1 s (the reconcile then decides again).
        self._waiting: dict[str, tuple[float, clock_mod.TimerHandle]] = {}
        self._ready = asyncio.Event()
        self._shutting_down = False

    # --- adding ---

    def add(self, key: str) -> None:
        """Queue ``key`` unless already queued; if a worker has it, queue it after ``done``."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._ready.set()

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` once ``delay`` seconds have passed (now if ``delay <= 0``)."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        due = self._clock.now() + delay
        current = self._waiting.get(key)
        if current is not None:
            if current[0] <= due:
                return
            current[1].cancel()
        handle = self._clock.call_later(delay, lambda: self._fire(key, due))
        self._waiting[key] = (due, handle)

    def _fire(self, key: str, due: float) -> None:
        current = self._waiting.get(key)
        if current is not None and current[0] == due:
            del self._waiting[key]
            self.add(key)

    def add_rate_limited(self, key: str) -> None:
        """Retry ``key`` after its backoff (which this call lengthens)."""
        self.add_after(key, self._limiter.when(key))

    def forget(self, key: str) -> None:
        """``key`` reconciled cleanly: reset its backoff."""
        self._limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return self._limiter.num_requeues(key)

    # --- consuming ---

    async def get(self) -> str | None:
        """The next key to reconcile, waiting for one; None once the queue is shut down.

        The caller owns the key until it calls :meth:`done` with it.
        """
        while not self._queue:
            if self._shutting_down:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self._shutting_down:
            return None
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: str) -> None:
        """The worker finished ``key``; if it was added again meanwhile, queue it now."""
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._ready.set()

    # --- lifecycle and introspection ---

    def shutdown(self) -> None:
        """Stop handing out keys: pending and future ``get`` calls return None."""
        self._shutting_down = True
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        self._ready.set()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        """Keys ready for a worker (not counting ones in progress or delayed)."""
        return len(self._queue)

    @property
    def processing(self) -> frozenset[str]:
        return frozenset(self._processing)

    @property
    def waiting(self) -> int:
        """Keys scheduled by ``add_after``/``add_rate_limited`` and not yet due."""
        return len(self._waiting)
