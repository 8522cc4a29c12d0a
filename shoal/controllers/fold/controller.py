"""The fold controller: the status each node reports for its tasks, copied into the Tasks.

What it owns: writing ``Task.status`` from the nodes' task reports,
``<p>/reports/<node>/<ns>/<name>`` ({uid, status}, written by the agent's
``statuswriter``), and each Node's labels and agent-owned status from its node report,
``<p>/reports/<node>/status`` ({role, labels, status}; the Node is created from it the
first time). Agents write no object: a worker's etcd user may write only its own
reports and its heartbeat (docs/security.md), so this controller is the hop between
what a node says and what everyone reads. ``status.state`` of a Node stays the nodes
controller's (from the heartbeat), once the Node exists.

How: an elected runnable (``shoal.runtime.runnable``) that lists and watches
``<p>/reports/``, keeps the newest report per (node, task) as pending, and
folds pending reports into the tasks of the shared task informer in fenced batches of
up to 127 compare-and-swap writes, several in flight. The rule is ``decide.fold``: the
right task (uid), assigned to the reporting node, state only forward. A batch that
loses a compare is retried task by task against a fresh read.

Why a crash at any point is safe: reports stay in etcd until their agent deletes them
(when the task is gone), and a new term lists them all again; folding is idempotent
(a report already folded decides ``done``), so nothing is lost or applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from shoal.controllers import common
from shoal.controllers.fold import decide
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.runtime import events, gcpolicy, runnable
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.store import client, codec, errors, etcd, projections, watch

log = rt_logging.get_logger("shoal.controllers.fold")

NAME: Final = "fold"
#: Batches of folds in flight at once.
PARALLEL: Final = 8
#: Seconds before a batch that could not be written (etcd away) is tried again.
RETRY_AFTER: Final = 0.5
#: Attempts of one task's compare-and-swap before it waits for the next change.
CAS_ATTEMPTS: Final = 10

Ref = tuple[str, str, str]  # (node, namespace, name)


class _Report:
    __slots__ = ("status", "uid")

    def __init__(self, uid: str, status: dict[str, Any]) -> None:
        self.uid = uid
        self.status = status


class _Reports:
    """The pending reports, kept by a list and watch of every node's keys."""

    def __init__(self, store: client.Store, changed: Any, node_changed: Any) -> None:
        self.store = store
        self.prefix = projections.reports_prefix(store.prefix)
        self.pending: dict[Ref, _Report] = {}
        self.nodes: dict[str, dict[str, Any]] = {}  # node -> its pending node report
        self._node_changed = node_changed
        self.by_task: dict[tuple[str, str], set[str]] = {}  # (ns, name) -> reporting nodes
        self.synced = asyncio.Event()
        self._changed = changed

    def _put(self, ref: Ref, value: bytes, key: bytes) -> None:
        found = projections.decode_report(value)
        if found is None:
            log.warning("skipping a report that cannot be read", key=key.decode(errors="replace"))
            self._drop(ref)
            return
        self.pending[ref] = _Report(*found)
        self.by_task.setdefault((ref[1], ref[2]), set()).add(ref[0])
        self._changed(ref)

    def _drop(self, ref: Ref) -> None:
        if self.pending.pop(ref, None) is not None:
            nodes = self.by_task.get((ref[1], ref[2]))
            if nodes is not None:
                nodes.discard(ref[0])
                if not nodes:
                    del self.by_task[(ref[1], ref[2])]

    def settle(self, ref: Ref, report: _Report) -> None:
        """``report`` is folded: let it go, unless a newer one came meanwhile."""
        if self.pending.get(ref) is report:
            self._drop(ref)

    def _ref(self, key: bytes) -> Ref | None:
        where = projections.parse_report_key(self.prefix, key)
        return None if where is None else (where.node, where.namespace, where.name)

    def _node_report(self, key: bytes, value: bytes | None) -> bool:
        """Take a node report (None: deleted); False if ``key`` is not one."""
        name = projections.parse_node_report_key(self.prefix, key)
        if name is None:
            return False
        report = projections.decode_node_report(value) if value is not None else None
        if report is None:
            if value is not None:
                log.warning("skipping a node report that cannot be read", key=f"node/{name}")
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = report
            self._node_changed(name)
        return True

    def settle_node(self, name: str, report: dict[str, Any]) -> None:
        if self.nodes.get(name) is report:
            del self.nodes[name]

    async def _relist(self) -> int:
        start, end = self.prefix, etcd.prefix_end(self.prefix)
        seen: dict[Ref, tuple[bytes, bytes]] = {}
        node_reports: list[tuple[bytes, bytes]] = []
        revision = 0
        while True:
            kvs, rev, more = await self.store.etcd.range_raw(start, end, revision, 5000)
            revision = revision or rev
            for kv in kvs:
                ref = self._ref(kv.key)
                if ref is not None:
                    seen[ref] = (kv.value, kv.key)
                elif projections.parse_node_report_key(self.prefix, kv.key) is not None:
                    node_reports.append((kv.key, kv.value))
            if not more or not kvs:
                break
            start = kvs[-1].key + b"\0"
        for ref in [r for r in self.pending if r not in seen]:
            self._drop(ref)
        for i, (ref, (value, key)) in enumerate(seen.items()):
            self._put(ref, value, key)
            if i % 5000 == 4999:
                await asyncio.sleep(0)
        self.nodes.clear()
        for key, value in node_reports:
            self._node_report(key, value)
        self.synced.set()
        return revision

    async def run(self) -> None:
        """List, then follow every node's report keys (``shoal.store.watch`` resumes)."""
        async for batch in watch.follow_prefix(self.store, self.prefix, self._relist,
                                               what="report watch"):
            for i, ev in enumerate(batch):
                if i % 512 == 511:
                    await asyncio.sleep(0)  # a catching-up response: 1000s of events
                if self._node_report(ev.key, None if ev.deleted else ev.value):
                    continue
                ref = self._ref(ev.key)
                if ref is None:
                    continue  # a key of another shape (hand-written)
                if ev.deleted:
                    self._drop(ref)
                else:
                    self._put(ref, ev.value, ev.key)


#: Task states whose arrival is worth an Event (``get events -w``, ``describe task``).
FAILURES: Final = frozenset({ts.FAILED, ts.REJECTED})


async def _record_failures(store: client.Store, tasks: list[Resource]) -> None:
    """A Warning Event per failed task, one at a time (a mass failure must not flood
    etcd); a repeat of the same failure bumps its count."""
    for task in tasks:
        status = task.status
        why = status.get("err") or status.get("message") or (
            f"exit code {status['exitCode']}" if status.get("exitCode") is not None else "")
        message = f"{status.get('state')} on node {task.spec.get('nodeName')}" + (
            f": {why}" if why else "")
        try:
            await events.record_event(store, task, events.WARNING, "TaskFailed", message,
                                      source=NAME)
        except errors.StoreError as exc:
            log.info("could not record event", key=f"task/{task.metadata.namespace}/"
                     f"{task.name}", error=str(exc))


class FoldController:
    """One per controller-manager: ``spec`` is the RunnableSpec to run."""

    def __init__(self) -> None:
        self.spec = runnable.RunnableSpec(name=NAME, run=self._run)
        self.folds = 0  # Task status writes made, for tests and benchmarks
        self._noting: set[asyncio.Task[None]] = set()

    async def _run(self, ctx: runnable.RunContext) -> None:
        tasks = ctx.informers.informer(common.TASKS)
        nodes = ctx.informers.informer(common.NODES)
        await tasks.wait_synced()
        await nodes.wait_synced()
        gcpolicy.install()
        dirty: set[Ref] = set()
        dirty_nodes: set[str] = set()
        wake = asyncio.Event()

        def touch(ref: Ref) -> None:
            dirty.add(ref)
            wake.set()

        def touch_node(name: str) -> None:
            dirty_nodes.add(name)
            wake.set()

        reports = _Reports(ctx.store, touch, touch_node)

        def task_changed(task: Resource) -> None:
            nodes = reports.by_task.get((task.metadata.namespace or "default", task.name))
            for node in nodes or ():
                touch((node, task.metadata.namespace or "default", task.name))

        remove = tasks.add_handlers(task_changed, lambda _o, n: task_changed(n), None)
        watcher = asyncio.create_task(reports.run(), name="fold:reports")
        try:
            while True:
                await wake.wait()
                wake.clear()
                if watcher.done():
                    watcher.result()  # surface a crash of the watch (it retries otherwise)
                batch, dirty = list(dirty), set()
                named, dirty_nodes = list(dirty_nodes), set()
                if named:
                    await asyncio.gather(*(self._fold_node(ctx, nodes, reports, n, touch_node)
                                           for n in named))
                await self._fold(ctx, tasks, reports, batch, touch)
        finally:
            remove()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _fold(self, ctx: runnable.RunContext, tasks: informer_mod.Informer,
                    reports: _Reports, refs: list[Ref], touch: Any) -> None:
        """Write what ``refs``' pending reports say, in batches of at most 127 tasks, a few
        batches at a time: deciding 100,000 folds in one go would stall the event loop
        for a second (leader leases at risk), so each slice is decided, then written."""
        step = common.MAX_OPS * PARALLEL
        for i in range(0, len(refs), step):
            await self._fold_slice(ctx, tasks, reports, refs[i:i + step], touch)

    async def _fold_slice(self, ctx: runnable.RunContext, tasks: informer_mod.Informer,
                          reports: _Reports, refs: list[Ref], touch: Any) -> None:
        writes: list[tuple[Ref, _Report, Resource]] = []
        seen: set[tuple[str, str]] = set()
        for ref in refs:
            report = reports.pending.get(ref)
            if report is None:
                continue
            task = tasks.get(ref[2], ref[1])
            verdict, status = decide.fold(task, ref[0], report.uid, report.status)
            if verdict == "done":
                reports.settle(ref, report)
            elif verdict == "write" and status is not None and task is not None:
                if (ref[1], ref[2]) in seen:
                    touch(ref)  # one write per task per batch: the next round takes it
                    continue
                seen.add((ref[1], ref[2]))
                writes.append((ref, report, codec.with_status(task, status)))
        chunks = [writes[i:i + common.MAX_OPS] for i in range(0, len(writes), common.MAX_OPS)]
        if not chunks:
            await asyncio.sleep(0)
            return
        results = await asyncio.gather(
            *(self._commit(ctx, reports, chunk, touch) for chunk in chunks),
            return_exceptions=True)
        for result in results:
            if isinstance(result, errors.FencedError):
                raise result
            if isinstance(result, Exception):
                log.error("folding reports failed", error=str(result),
                          error_type=type(result).__name__)

    async def _commit(self, ctx: runnable.RunContext, reports: _Reports,
                      chunk: list[tuple[Ref, _Report, Resource]], touch: Any) -> None:
        ops = [client.Op("update", common.TASKS, obj) for _, _, obj in chunk]
        try:
            await ctx.store.commit(ops, fence=ctx.fence, share=True)
        except errors.FencedError:
            raise
        except errors.ConflictError:
            await asyncio.gather(*(self._one(ctx, reports, ref, report, touch)
                                   for ref, report, _ in chunk))
            return
        except errors.UnavailableError as exc:
            log.warning("folding reports failed; retrying", tasks=len(chunk),
                        key=f"task/{chunk[0][0][1]}/{chunk[0][0][2]}", error=str(exc))
            loop = asyncio.get_running_loop()
            for ref, _, _ in chunk:
                loop.call_later(RETRY_AFTER, touch, ref)
            return
        self.folds += len(chunk)
        for ref, report, _ in chunk:
            reports.settle(ref, report)
        failed = [obj for _, _, obj in chunk if obj.status.get("state") in FAILURES]
        if failed:
            self._note(_record_failures(ctx.store, failed))

    def _note(self, coro: Any) -> None:
        """Run ``coro`` (events: best effort) beside the fold, never in its way."""
        task = asyncio.create_task(coro)
        self._noting.add(task)
        task.add_done_callback(self._noting.discard)

    async def _fold_node(self, ctx: runnable.RunContext, nodes: informer_mod.Informer,
                         reports: _Reports, name: str, touch_node: Any) -> None:
        """Bring one Node in line with its node report (create, or compare-and-swap)."""
        report = reports.nodes.get(name)
        if report is None:
            return
        current: Resource | None = nodes.get(name)
        for _ in range(CAS_ATTEMPTS):
            verdict, obj = decide.fold_node(current, name, report)
            try:
                if verdict == "create" and obj is not None:
                    await ctx.store.create(common.NODES, obj, fence=ctx.fence)
                    log.info("node registered", key=f"node/{name}",
                             role=obj.spec.get("role"), labels=obj.metadata.labels)
                elif verdict == "update" and obj is not None:
                    await ctx.store.update(common.NODES, obj, fence=ctx.fence)
                reports.settle_node(name, report)
                return
            except errors.FencedError:
                raise
            except (errors.ConflictError, errors.NotFoundError, errors.AlreadyExistsError):
                pass  # someone else wrote (or deleted) it first: read again, decide again
            except errors.StoreError as exc:
                log.warning("folding a node report failed; retrying", key=f"node/{name}",
                            error=str(exc))
                asyncio.get_running_loop().call_later(RETRY_AFTER, touch_node, name)
                return
            try:
                current = await ctx.store.get(common.NODES, name)
            except errors.NotFoundError:
                current = None
            except errors.StoreError:
                break
        asyncio.get_running_loop().call_later(RETRY_AFTER, touch_node, name)

    async def _one(self, ctx: runnable.RunContext, reports: _Reports, ref: Ref,
                   report: _Report, touch: Any) -> None:
        """Fold one report against fresh reads until its compare-and-swap holds."""
        for _ in range(CAS_ATTEMPTS):
            try:
                task: Resource | None = await ctx.store.get(common.TASKS, ref[2], ref[1])
            except errors.NotFoundError:
                return  # deleted: the agent deletes its report next
            except errors.StoreError as exc:
                log.warning("reading a task to fold its report failed", error=str(exc),
                            key=f"task/{ref[1]}/{ref[2]}")
                asyncio.get_running_loop().call_later(RETRY_AFTER, touch, ref)
                return
            verdict, status = decide.fold(task, ref[0], report.uid, report.status)
            if verdict == "done":
                reports.settle(ref, report)
                return
            if verdict == "wait" or status is None or task is None:
                return  # the informer's next change of this task touches it again
            try:
                await ctx.store.update(common.TASKS, codec.with_status(task, status),
                                       fence=ctx.fence)
            except errors.FencedError:
                raise
            except errors.ConflictError:
                continue
            except errors.StoreError as exc:
                log.warning("folding a report failed; retrying", error=str(exc),
                            key=f"task/{ref[1]}/{ref[2]}")
                asyncio.get_running_loop().call_later(RETRY_AFTER, touch, ref)
                return
            self.folds += 1
            reports.settle(ref, report)
            return
        asyncio.get_running_loop().call_later(RETRY_AFTER, touch, ref)


def controller_spec() -> runnable.RunnableSpec:
    """A fresh fold controller (one per controller-manager process)."""
    return FoldController().spec
