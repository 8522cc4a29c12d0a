"""Group commit: independent single-object writes issued concurrently share one etcd txn.

A controller updating many task statuses issues dozens of compare-and-swap writes at
once. Each is a (compares, operations) pair that must succeed or fail on its own. Sent
one per round trip, they pay gRPC and raft overhead per write; gathered from one event
loop tick into a single transaction they pay it once. The semantics stay per-write:

* all compares of a group hold -> the one transaction applies every write;
* any compare fails -> nothing was applied, and each write is retried alone, so only
  the writes whose own compares fail report failure.

Writes to the same key never share a group (etcd rejects duplicate keys in a txn, and
the second write's compare must see the first one's result).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# (compares, operations) -> (succeeded, revision)
TxnFunc = Callable[[Sequence[Any], Sequence[Any]], Awaitable[tuple[bool, int]]]


@dataclasses.dataclass
class _Pending:
    key: bytes
    compares: list[Any]
    ops: list[Any]
    future: asyncio.Future[tuple[bool, int]]


class GroupCommitter:
    """Coalesces concurrent writes; ``max_ops`` bounds the transaction size."""

    def __init__(self, txn: TxnFunc, max_ops: int = 128) -> None:
        self._txn = txn
        self._max_ops = max_ops
        self._pending: list[_Pending] = []
        self._scheduled = False
        self.transactions = 0  # for tests and benchmarks: round trips actually made

    def submit(self, key: bytes, compares: list[Any],
               ops: list[Any]) -> asyncio.Future[tuple[bool, int]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, int]] = loop.create_future()
        self._pending.append(_Pending(key, compares, ops, future))
        if not self._scheduled:
            self._scheduled = True
            # call_soon: every writer that is ready in this tick joins the group.
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        while pending:
            group: list[_Pending] = []
            later: list[_Pending] = []
            keys: set[bytes] = set()
            size = 0
            for item in pending:
                cost = max(len(item.compares), len(item.ops))
                if item.key in keys or size + cost > self._max_ops:
                    later.append(item)
                else:
                    group.append(item)
                    keys.add(item.key)
                    size += cost
            asyncio.get_running_loop().create_task(self._run(group))
            pending = later

    async def _run(self, group: list[_Pending]) -> None:
        try:
            if len(group) == 1:
                item = group[0]
                _resolve(item, await self._txn(item.compares, item.ops))
                return
            compares = [c for item in group for c in item.compares]
            ops = [o for item in group for o in item.ops]
            ok, rev = await self._txn(compares, ops)
            self.transactions += 1
            if ok:
                for item in group:
                    _resolve(item, (True, rev))
                return
            # Someone's compare failed and nothing was written: find out whose.
            results = await asyncio.gather(
                *(self._txn(item.compares, item.ops) for item in group),
                return_exceptions=True)
            self.transactions += len(group)
            for item, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    _fail(item, result)
                else:
                    _resolve(item, result)
        except BaseException as exc:  # delivered to every waiting writer, then re-raised if fatal
            for item in group:
                _fail(item, exc)
            if not isinstance(exc, Exception):
                raise


def _resolve(item: _Pending, result: tuple[bool, int]) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _fail(item: _Pending, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
