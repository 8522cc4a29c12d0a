"""Time for the work queue and its rate limiters: the real event-loop clock and a fake one.

The queue never sleeps itself; it asks a clock to call it back later. Swapping in
:class:`FakeClock` makes backoff, rate limits and delayed requeues deterministic in unit
tests: time moves only when the test calls :meth:`FakeClock.advance`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` (synchronously, on the loop) after ``delay`` seconds."""
        ...


class LoopClock:
    """The running event loop's clock; what production code uses."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(delay, 0.0), callback)


class _FakeTimer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class FakeClock:
    """A clock that only moves when told to; due callbacks run inside :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _FakeTimer(callback)
        heapq.heappush(self._timers, (self._now + max(delay, 0.0), next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer that falls due, in deadline order."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if timer.callback is not None:
                callback, timer.callback = timer.callback, None
                callback()
        self._now = target

    @property
    def pending(self) -> int:
        """Timers not yet fired or cancelled (for assertions in tests)."""
        return sum(1 for _, _, t in self._timers if t.callback is not None)
