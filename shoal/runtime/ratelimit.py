"""How long a key must wait before it is retried: per-key backoff and a global token bucket.

Same model as client-go's rate limiters: a limiter answers ``when(key)`` with a delay and
remembers the failure; ``forget(key)`` clears the memory once the key reconciles cleanly.
The controller default combines both, so one broken object backs off exponentially while
a storm of failures across many objects is also capped in total.
"""

from __future__ import annotations

from typing import Protocol

from shoal.runtime import clock as clock_mod


class RateLimiter(Protocol):
    def when(self, key: str) -> float:
        """Record one more failure of ``key`` and return how long to wait before retrying."""
        ...

    def forget(self, key: str) -> None:
        """``key`` succeeded: its next failure starts from the base delay again."""
        ...

    def num_requeues(self, key: str) -> int:
        ...


class ExponentialBackoff:
    """``base * 2**failures`` seconds, capped at ``cap``; tracked per key."""

    def __init__(self, base: float = 0.005, cap: float = 60.0) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}

    def when(self, key: str) -> float:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        if n > 64:  # 2**n overflows a float long before this matters
            return self.cap
        return float(min(self.base * (2 ** n), self.cap))

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)


class TokenBucket:
    """At most ``qps`` retries per second on average, ``burst`` at once, for all keys together.

    A request that finds the bucket empty reserves a future token (the bucket goes
    negative) and is told how long until that token exists, so callers are spaced out
    exactly ``1/qps`` apart instead of stampeding when the bucket refills.
    """

    def __init__(self, qps: float = 10.0, burst: int = 100,
                 clock: clock_mod.Clock | None = None) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"token bucket needs qps > 0 and burst >= 1, got {qps}, {burst}")
        self.qps = qps
        self.burst = burst
        self._clock = clock or clock_mod.LoopClock()
        self._tokens = float(burst)
        self._last: float | None = None

    def when(self, key: str) -> float:
        now = self._clock.now()
        if self._last is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.qps

    def forget(self, key: str) -> None:
        pass  # the bucket is global: one key succeeding returns no tokens

    def num_requeues(self, key: str) -> int:
        return 0


class MaxOf:
    """The longest delay any of several limiters asks for (every limiter records the failure)."""

    def __init__(self, *limiters: RateLimiter) -> None:
        self.limiters = limiters

    def when(self, key: str) -> float:
        return max(limiter.when(key) for limiter in self.limiters)

    def forget(self, key: str) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def num_requeues(self, key: str) -> int:
        return max(limiter.num_requeues(key) for limiter in self.limiters)


def default_rate_limiter(clock: clock_mod.Clock | None = None, base: float = 0.005,
                         cap: float = 60.0, qps: float = 10.0, burst: int = 100) -> RateLimiter:
    """Per-key 5 ms doubling up to 60 s, and no more than 10 retries/s (burst 100) overall."""
    return MaxOf(ExponentialBackoff(base, cap), TokenBucket(qps, burst, clock))
