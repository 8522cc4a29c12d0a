"""Retrying etcd calls through a member's failure, and deciding whether a write landed.

When an etcd member dies (or the raft leader does), a call in flight gets an error or —
worse — no answer: a follower that forwarded a proposal to a leader that died holds the
request until etcd's own request timeout (7 s with the default election timeout). A
highly available cluster must turn both into "try again, on a live member" within the
time a new leader takes to be elected, and must do it without losing or doubling a write.

Reads are idempotent and are simply retried. A write whose attempt failed is
*ambiguous*: it may have been committed before the member died. Retrying it is still
safe, because every Shoal write is a transaction guarded by compares (create-if-absent,
compare-and-swap on the revision, the leader fence): if the first attempt applied, the
retry's compares fail instead of writing twice. What is left is to tell "my earlier
attempt applied" from "someone else got there first", which :func:`landed` does by
reading the keys back: every put key holds exactly the bytes (and lease) this write put,
and every deleted key is gone. A different writer producing the very same bytes leaves
the store in the state this write asked for, so counting it as success is right too.

Each attempt has its own deadline, short at first (a healthy etcd answers in
milliseconds; the first retry is what gets past a dead leader) and doubling after each
attempt that ran out of it, so a loaded machine is not hammered with retries of a slow
but live call; an attempt that failed at once leaves the deadline as it was. The whole call
gives up after ``budget`` seconds with the store's usual :class:`UnavailableError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from shoal.store import errors, etcd

log = structlog.get_logger("shoal.store.retry")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Policy:
    """How long one call may try, in total and per attempt (seconds)."""

    budget: float = 10.0
    # Past an election (0.5-1 s with the members' timings, etcd_server.CLUSTER_TIMINGS)
    # and well past a healthy call on a loaded machine (single writes' slowest: 0.26-0.40 s
    # at load 7-25); docs/ha.md has the measurements.
    first_attempt: float = 1.0
    max_attempt: float = 8.0
    backoff: float = 0.05
    max_backoff: float = 0.25


DEFAULT = Policy()


class Attempts:
    """The attempts of one call: ``async for timeout in Attempts(policy)`` while
    ``failed(exc)`` says there is time for another."""

    def __init__(self, policy: Policy, what: str, key: str = "") -> None:
        self.policy = policy
        self.what = what
        self.key = key
        loop = asyncio.get_running_loop()
        self._now = loop.time
        self._deadline = self._now() + policy.budget
        self._attempt = policy.first_attempt
        self._backoff = policy.backoff
        self.failures = 0

    def timeout(self) -> float:
        """The deadline of the next attempt (never past the budget, never below 0.2 s)."""
        left = self._deadline - self._now()
        return max(0.2, min(self._attempt, left)) if self.failures else self._attempt

    async def failed(self, exc: BaseException) -> None:
        """Record a failed attempt: sleep before the next, or raise if the budget is spent.

        A refused TLS handshake is raised at once: no other member will accept it either;
        so is etcd's refusal of a write for want of space (every member shares the alarm,
        and it lasts until someone compacts and defragments, not for a retry's seconds).
        """
        if isinstance(exc, (errors.TLSRefusedError, errors.NoSpaceError)):
            raise exc
        self.failures += 1
        left = self._deadline - self._now()
        if left <= self._backoff:
            if isinstance(exc, errors.UnavailableError):
                raise exc
            raise errors.UnavailableError(
                "etcd", f"no answer to {self.what} within {self.policy.budget:g} s") from None
        log.info("etcd call failed; retrying", key=self.key, call=self.what,
                 attempt=self.failures, error=str(exc) or type(exc).__name__)
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self.policy.max_backoff)
        if _ran_out(exc):
            # Only an attempt that used its whole deadline says etcd may be slow. One that
            # failed at once (the member's connection broke, "leader changed") says
            # nothing of the kind, and doubling after it made the next attempt -- the one
            # a follower forwards to the leader that just died -- wait 2 s instead of 1.
            self._attempt = min(self._attempt * 2, self.policy.max_attempt)


def _ran_out(exc: BaseException) -> bool:
    """Whether an attempt failed by running out of time (ours or gRPC's deadline)."""
    return isinstance(exc, TimeoutError) or "deadline_exceeded" in str(exc)


async def call(policy: Policy, what: str, fn: Callable[[], Awaitable[T]], key: str = "") -> T:
    """Run ``fn`` (an idempotent call) until it answers or the budget is spent."""
    attempts = Attempts(policy, what, key)
    while True:
        try:
            async with asyncio.timeout(attempts.timeout()):
                return await fn()
        except (errors.UnavailableError, TimeoutError) as exc:
            await attempts.failed(exc)


def touched_keys(ops: Sequence[etcd.Op]) -> list[bytes]:
    """The keys a transaction's operations put or delete (reads excluded), in order."""
    return [op.key for op in ops if op.kind != etcd.op_get(b"").kind]


def landed(ops: Sequence[etcd.Op], current: dict[bytes, Any]) -> bool:
    """True when the store holds what ``ops`` wrote: each put key has exactly its value
    and lease, each deleted key is absent. ``current`` maps key -> (value, lease) or None."""
    put_kind = etcd.op_put(b"", b"").kind
    delete_kind = etcd.op_delete(b"").kind
    for op in ops:
        now = current.get(op.key)
        if op.kind == put_kind:
            if now is None or now != (op.value, op.lease):
                return False
        elif op.kind == delete_kind and now is not None:
            return False
    return True
