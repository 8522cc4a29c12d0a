"""Writing the status of every task an agent process serves, as the nodes' reports.

What it owns: turning "task X reached state S" (reported by a node's task manager) into
writes of the node's report key ``<p>/reports/<node>/<ns>/<name>`` ({uid,
status}), without ever moving a state backwards and without blocking the state machine
that reported it. The fold controller copies reports into ``Task.status``
(``shoal.controllers.fold``); a worker's etcd user may write its reports and nothing of
any Task (docs/security.md).

Why it is built so: one writer per process (not per node) lets writes of many nodes
share transactions, up to 127 reports each and several in flight. Intermediate states
(accepted, preparing, starting) wait a moment before they are written and are
superseded if the task moves on meanwhile, as Swarm's dispatcher batches agent status
updates: a slow image pull shows ``preparing``, a task that starts at once costs one
write (``running``) instead of four. A report key belongs to its agent alone, so the
writes are plain puts that cannot conflict; the report of a deleted task is deleted
only if it is still the one this writer last wrote (a compare on its revision), so a
namesake's newer report is never lost.

The writer reads and refreshes the reporting task manager's cache through the small
:class:`StatusSource` protocol, so it does not depend on the task manager module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from typing import Any, Protocol

from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.store import client, errors, etcd, projections

RANK = ts.RANK
R_RUNNING = RANK[ts.RUNNING]


class StatusSource(Protocol):
    """What the writer needs of the task manager whose tasks it writes."""

    log: Any
    node: str

    def cached(self, key: str) -> resource.Resource | None:
        """The newest version of the task this manager holds."""

    def remember_status(self, key: str, uid: str, status: dict[str, Any]) -> None:
        """The status as our own report stored it."""

    def ref(self, key: str) -> str:
        """The task's key as logs show it."""


@dataclasses.dataclass
class _Report:
    manager: StatusSource
    key: str
    uid: str
    fields: dict[str, Any]
    due: float = 0.0


merge_status = ts.merge_status  # the rule lives with the task states


class StatusWriter:
    """Writes the latest reported status of each task, for every node of the process.

    Reports for one task coalesce until written. ``running`` and end states are written
    at once; the intermediate states (accepted, preparing, starting) linger for
    ``linger`` seconds first and are dropped if the task has moved on by then — a user
    sees ``preparing`` during a slow pull, while a task that starts at once costs one
    write instead of four. Writes go out as transactions of up to 127 reports, several
    in flight at once; a failed transaction (etcd unreachable) is retried later with
    whatever was reported since.
    """

    def __init__(self, store: client.Store, linger: float = 0.2, batch: int = 127,
                 parallel: int = 8) -> None:
        self.store = store
        self.linger = linger
        self.batch = min(batch, client.MAX_TXN_OPS - 1)
        self.parallel = parallel
        self._urgent: dict[str, _Report] = {}
        self._lingering: dict[str, _Report] = {}  # insertion order is due order
        # report key -> (uid, revision) of the report this writer last wrote there
        self._written: dict[bytes, tuple[str, int]] = {}
        self._forget: dict[bytes, str] = {}  # report keys to delete -> uid they are of
        self._wake = asyncio.Event()
        self.writes = 0
        self.transactions = 0
        self.conflicts = 0  # kept for stats(); reports cannot conflict

    def report_key(self, manager: StatusSource, key: str) -> bytes:
        namespace, _, name = key.partition("/")
        return projections.report_key(self.store.prefix, manager.node, namespace, name)

    def submit(self, manager: StatusSource, key: str, uid: str, fields: dict[str, Any],
               urgent: bool = True) -> None:
        for table in (self._urgent, self._lingering):
            queued = table.get(key)
            if queued is not None:
                if queued.uid == uid:
                    queued.fields = {**queued.fields, **fields}
                    if urgent and table is self._lingering:
                        del self._lingering[key]
                        self._urgent[key] = queued
                        self._wake.set()
                    return
                del table[key]  # a report for a deleted namesake: drop it
        report = _Report(manager, key, uid, fields)
        if urgent or self.linger <= 0:
            self._urgent[key] = report
            self._wake.set()
        else:
            report.due = asyncio.get_running_loop().time() + self.linger
            was_empty = not self._lingering
            self._lingering[key] = report
            if was_empty:
                self._wake.set()  # the writer sleeps until the first due time

    def forget(self, manager: StatusSource, key: str, uid: str) -> None:
        """The task is gone from the node: drop its queued reports and delete its report
        key, if that still holds this uid's report."""
        for table in (self._urgent, self._lingering):
            queued = table.get(key)
            if queued is not None and queued.uid == uid:
                del table[key]
        self._forget[self.report_key(manager, key)] = uid
        self._wake.set()

    def adopt(self, report_key: bytes, uid: str, revision: int) -> None:
        """A report found in etcd at start-up: this writer wrote it (a previous run)."""
        self._written[report_key] = (uid, revision)

    def idle(self) -> bool:
        return not self._urgent and not self._lingering and not self._forget

    def _promote_due(self) -> float | None:
        """Move lingering reports that are due to the urgent table; next due time."""
        now = asyncio.get_running_loop().time()
        while self._lingering:
            key, report = next(iter(self._lingering.items()))
            if report.due > now:
                return report.due - now
            del self._lingering[key]
            self._urgent[key] = report
        return None

    async def run(self) -> None:
        while True:
            wait = self._promote_due()
            if self._forget:
                await self._delete_forgotten()
            if not self._urgent:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            reports: list[_Report] = []
            for key in list(self._urgent)[:self.batch * self.parallel]:
                reports.append(self._urgent.pop(key))
            batches = [reports[i:i + self.batch] for i in range(0, len(reports), self.batch)]
            await asyncio.gather(*(self._commit(b) for b in batches))

    async def _commit(self, reports: list[_Report]) -> None:
        ops: list[etcd.Op] = []
        sent: list[tuple[_Report, bytes, dict[str, Any]]] = []
        for report in reports:
            obj = report.manager.cached(report.key)
            if obj is None or obj.metadata.uid != report.uid:
                continue  # the task was deleted (or replaced by a namesake)
            status = merge_status(obj.status, report.fields)
            if status is None:
                continue
            key = self.report_key(report.manager, report.key)
            ops.append(etcd.op_put(key, projections.encode_report(report.uid, status)))
            sent.append((report, key, status))
        if not ops:
            return
        try:
            _, revision, _ = await self.store.etcd.txn([], ops)
        except errors.UnavailableError as exc:
            first = sent[0][0]
            first.manager.log.warning("status reports failed, retrying", tasks=len(sent),
                                      key=first.manager.ref(first.key), error=str(exc))
            asyncio.get_running_loop().call_later(0.5 + random.random(), self._retry,
                                                  [r for r, _, _ in sent])
            return
        self.transactions += 1
        self.writes += len(sent)
        for report, key, status in sent:
            self._written[key] = (report.uid, revision)
            current = report.manager.cached(report.key)
            if current is None or current.metadata.uid != report.uid:
                # Deleted while the write was in flight: delete what was just written.
                self._forget[key] = report.uid
                self._wake.set()
                continue
            report.manager.remember_status(report.key, report.uid, status)

    async def _delete_forgotten(self) -> None:
        """Delete the reports of gone tasks, each only if it is still the one written."""
        forget, self._forget = self._forget, {}
        items = []
        for key, uid in forget.items():
            written = self._written.get(key)
            if written is not None and written[0] == uid:
                items.append((key, written[1]))
        for i in range(0, len(items), self.batch):
            chunk = items[i:i + self.batch]
            try:
                ok, _, _ = await self.store.etcd.txn(
                    [etcd.cmp_mod(k, rev) for k, rev in chunk],
                    [etcd.op_delete(k) for k, _ in chunk])
                if not ok:  # some key was rewritten meanwhile: one by one
                    for k, rev in chunk:
                        await self.store.etcd.txn([etcd.cmp_mod(k, rev)], [etcd.op_delete(k)])
            except errors.UnavailableError:
                for k, _ in chunk:
                    self._forget.setdefault(k, forget[k])  # next pass, as soon as etcd is back
                await asyncio.sleep(0.5)
                return
            for k, rev in chunk:
                if self._written.get(k, ("", -1))[1] == rev:
                    del self._written[k]

    def _retry(self, reports: list[_Report]) -> None:
        for report in reports:
            # Whatever was reported since wins over the fields of the failed write.
            queued = self._urgent.pop(report.key, None) or self._lingering.pop(report.key, None)
            if queued is not None and queued.uid == report.uid:
                report.fields = {**report.fields, **queued.fields}
            self._urgent[report.key] = report
        self._wake.set()
