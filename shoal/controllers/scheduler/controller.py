"""The scheduler loop: binds pending tasks to nodes, in batches, from an incremental view.

What it owns: a pending task's ``spec.nodeName`` and its move to ``status.state:
assigned``, and, for a task it cannot place, the ``status.message`` saying why (the
task stays ``pending``). It never moves a task that is already assigned (Swarm does not
rebalance either), never creates or stops tasks (the orchestrator does) and never judges
node health (the nodes controller does — the scheduler just reads ``status.state`` and
``spec.availability``).

How: an elected runnable (``shoal.runtime.runnable``) runs the batches while this
process holds the ``scheduler`` lease. The view they read is a
``placement.ClusterState`` kept alive for the life of the process and fed every task,
node and service change by the shared informers' handlers — what each task holds on its
node is recorded as a ``Charge`` and swapped when the task changes — so a batch never
re-reads the 100,000 tasks of a big cluster and a new leadership term starts at once.
Pending tasks (``status.state: pending``, desired running) are batched Swarm's way: a
batch starts 50 ms after the last relevant event, or at the latest 1 s after the first.
A batch runs the pure placement over the live state, then commits the assignments as
compare-and-swap updates in transactions of up to 127 tasks, several in flight. A
transaction that loses a compare is retried without the tasks the cache shows changed,
then task by task; a task whose write fails is un-charged and placed again in a later
batch. Tasks that fit nowhere get the placement's explanation in ``status.message`` —
written only when it changed — and are placed as soon as a node, service or freed
resource makes room (any such change wakes the loop).

Placements committed but not yet seen back through the informer are remembered
(``inflight``) and count on their node meanwhile. Nothing else needs remembering: the
assignments are in etcd, and a restarted scheduler rebuilds its view from the caches.
"""

from __future__ import annotations

import asyncio
import heapq
import resource as resource_mod
import time
from typing import Final

from shoal.controllers import common, nodefacts
from shoal.controllers.scheduler import filters as flt
from shoal.controllers.scheduler import placement
from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.runtime import gcpolicy
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.runtime.runnable import RunContext, RunnableSpec
from shoal.store import client, codec, errors

log = rt_logging.get_logger("shoal.controllers.scheduler")

#: A batch starts this long after the last event (Swarm's debounce)...
BATCH_DELAY: Final = 0.05
#: ...or this long after the first one, whichever comes first (Swarm: 1 s; under a steady
#: stream of new tasks that only delays the first placements — see docs/scheduler.md).
MAX_BATCH_DELAY: Final = 0.25
#: Tasks placed per batch at most: a bigger backlog is placed in back-to-back batches,
#: so the event loop (informers, commits, the leader lease) never stalls for long.
MAX_BATCH: Final = 10_000
#: Transactions in flight at once.
PARALLEL_TXNS: Final = 8
#: Cached tasks accounted between two yields to the event loop while rebuilding.
REBUILD_CHUNK: Final = 2000
#: After etcd trouble, try the failed tasks again this much later.
RETRY_AFTER: Final = 0.5
_PENDING_RANK: Final = ts.RANK[ts.PENDING]


def is_pending(task: Resource) -> bool:
    """Waiting for the scheduler: observed ``pending`` and still desired running."""
    return task.status.get("state") == ts.PENDING and ts.is_active_desired(task)


def assigned(task: Resource, node: str) -> Resource:
    """``task`` bound to ``node``: the object the scheduler writes (with CAS)."""
    return Resource(kind=task.kind, apiVersion=task.apiVersion, metadata=task.metadata,
                    spec={**task.spec, "nodeName": node},
                    status={**task.status, "state": ts.ASSIGNED,
                            "message": f"scheduled on {node}",
                            "timestamp": resource.now_rfc3339()})


def _holds_node(task: Resource) -> bool:
    """Past the scheduler and not ended: the task is charged to its node."""
    state = task.status.get("state")
    rank = ts.RANK.get(state, 0) if isinstance(state, str) else 0
    return _PENDING_RANK < rank <= ts.RUNNING_RANK


def with_message(task: Resource, message: str) -> Resource:
    return Resource(kind=task.kind, apiVersion=task.apiVersion, metadata=task.metadata,
                    spec=task.spec, status={**task.status, "message": message})


class _State:
    """What the scheduler knows, kept by the informers' handlers for the whole life of the
    process — across leadership terms, so a new term starts at once instead of replaying
    every cached task (100,000 of them) through the handlers again. ``run`` is one term:
    the batch loop, writing through that term's fenced store."""

    def __init__(self, store: client.Store, tasks: informer_mod.Informer,
                 nodes: informer_mod.Informer, services: informer_mod.Informer) -> None:
        self.store = store
        self.tasks = tasks
        self.nodes = nodes
        self.services = services
        self.cluster: placement.ClusterState | None = None
        self.charges: dict[str, placement.Charge] = {}
        self.pending: dict[str, Resource] = {}
        self.inflight: dict[str, str] = {}  # task key -> node: committed, not yet seen
        # Failed tasks counted against (service generation, node), until they age out.
        self.failures: dict[str, tuple[flt.ServiceKey, int, int, float]] = {}
        self._failure_heap: list[tuple[float, str]] = []
        self.quarantine: dict[str, str] = {}  # task key -> resourceVersion that broke us
        self.wake = asyncio.Event()
        self.first_event: float | None = None
        self.last_event = 0.0
        self.more = False  # the last batch was capped: run the next one at once
        self.fatal: BaseException | None = None
        self.sem = asyncio.Semaphore(PARALLEL_TXNS)
        self.commits: set[asyncio.Task[None]] = set()
        self.placed = 0  # committed assignments this term (for logs and benchmarks)
        self._removers: list[object] = []

    # --- informer handlers (synchronous, cheap) ---

    def poke(self) -> None:
        now = asyncio.get_running_loop().time()
        self.last_event = now
        if self.first_event is None:
            self.first_event = now
        self.wake.set()

    def attach(self) -> None:
        self._removers = [
            self.tasks.add_handlers(lambda t: self._task(t, t), self._task_changed,
                                    lambda t: self._task(t, None)),
            self.nodes.add_handlers(self._node_changed, lambda _o, n: self._node_changed(n),
                                    self._node_gone),
            self.services.add_handlers(self._service, lambda _o, s: self._service(s),
                                       self._service_gone),
        ]

    def detach(self) -> None:
        for remove in self._removers:
            remove()  # type: ignore[operator]
        self._removers = []

    def _task_changed(self, old: Resource, task: Resource) -> None:
        """The common update — a placed task reporting progress (assigned, ..., running) —
        changes nothing the books hold: same spec (so the same node, service generation
        and desired state; the codec recorded the digest of each version), and the task
        holds its node before and after. A third of all task events are these."""
        digest = codec.stored_spec_digest(task)
        if (self.cluster is not None and digest is not None
                and digest == codec.stored_spec_digest(old)
                and _holds_node(old) and _holds_node(task)):
            return
        self._task(task, task)

    def _task(self, ref: Resource, task: Resource | None) -> None:
        key = ts.task_key(ref)
        try:
            if task is not None and is_pending(task):
                self.pending[key] = task
                self.poke()
            else:
                self.pending.pop(key, None)
                self.inflight.pop(key, None)
            self._recharge(key, task)
            if task is not None:
                self._note_failure(key, task)
        except Exception:
            log.exception("cannot account for task; ignoring this change", key=key)

    def _node_changed(self, node: Resource) -> None:
        cluster = self.cluster
        if cluster is not None:
            try:
                if not cluster.update_node(node):
                    self.cluster = None  # a new node: renumber everything on the next batch
            except Exception as exc:
                log.warning("node unreadable; rebuilding without it", key=node.ref,
                            error=str(exc))
                self.cluster = None
        self.poke()

    def _node_gone(self, node: Resource) -> None:
        self.cluster = None
        self.poke()

    def _service(self, svc: Resource) -> None:
        if self.cluster is not None:
            self.cluster.set_service(svc)
        self.poke()

    def _service_gone(self, svc: Resource) -> None:
        if self.cluster is not None:
            self.cluster.drop_service((ts.namespace_of(svc), svc.metadata.name))
        self.poke()

    # --- the books: what every task holds ---

    def _recharge(self, key: str, task: Resource | None) -> None:
        """Make the charge recorded for ``key`` match the task as it is now."""
        cluster = self.cluster
        if cluster is None:
            return
        new: placement.Charge | None = None
        if task is not None:
            node = self.inflight.get(key)
            new = cluster.charge_of(task, node if node is not None and is_pending(task)
                                    else None)
        old = self.charges.get(key)
        if old == new:
            return
        if old is not None:
            cluster.apply(old, -1)
            if self.pending:
                self.poke()  # resources, ports or a replica slot were freed
        if new is not None:
            cluster.apply(new, 1)
            self.charges[key] = new
        else:
            self.charges.pop(key, None)

    def _note_failure(self, key: str, task: Resource) -> None:
        """Count a task that failed on a node within the window (once per task)."""
        cluster = self.cluster
        if cluster is None or key in self.failures:
            return
        failure = cluster.failure_of(task, time.time() - placement.FAILURE_WINDOW)
        if failure is None:
            return
        svc, gen, node, stamp = failure
        cluster.count_failure(svc, gen, node)
        self.failures[key] = failure
        heapq.heappush(self._failure_heap, (stamp + placement.FAILURE_WINDOW, key))

    def _expire_failures(self) -> None:
        cluster = self.cluster
        now = time.time()
        while self._failure_heap and self._failure_heap[0][0] <= now:
            _, key = heapq.heappop(self._failure_heap)
            counted = self.failures.pop(key, None)
            if counted is not None and cluster is not None:
                cluster.count_failure(counted[0], counted[1], counted[2], -1)

    async def rebuild(self) -> placement.ClusterState:
        """A fresh state from the caches (first batch, or nodes added or removed).

        The state is live from the start — changes arriving meanwhile go through the
        handlers as usual — and the walk over the cached tasks yields every
        ``REBUILD_CHUNK`` tasks, so even 100,000 tasks never stall the event loop (and
        the leader lease with it). Recharging is idempotent, so a task seen both by the
        walk and by a handler is counted once.
        """
        started = time.perf_counter()
        cluster = placement.ClusterState(nodefacts.readable_nodes(self.nodes.list()), [],
                                         self.services.list())
        self.cluster = cluster
        self.charges.clear()
        self.failures.clear()
        self._failure_heap.clear()
        keys = list(self.tasks.keys())
        for i, (namespace, name) in enumerate(keys):
            if i % REBUILD_CHUNK == REBUILD_CHUNK - 1:
                await asyncio.sleep(0)
                if self.cluster is not cluster:
                    return await self.rebuild()  # a node came or went meanwhile
            key = f"{namespace}/{name}"
            task = self.tasks.get(name, namespace)
            try:
                self._recharge(key, task)
                if task is not None:
                    self._note_failure(key, task)
            except Exception:
                log.exception("cannot account for task; ignoring it", key=key)
        log.info("scheduler state built", key="scheduler", nodes=len(cluster.nodes),
                 charged=len(self.charges), pending=len(self.pending),
                 seconds=round(time.perf_counter() - started, 3))
        return cluster

    # --- batches ---

    async def run(self, store: client.Store) -> None:
        """One leadership term: batches until cancelled, writing through ``store``."""
        loop = asyncio.get_running_loop()
        self.store = store
        self.fatal = None
        self.sem = asyncio.Semaphore(PARALLEL_TXNS)
        # The previous leader's last assignments should be in the cache before this term
        # places anything, or it places those tasks again and loses every compare (safe,
        # but costly). Bounded: an undecodable task the informer skipped can hold the
        # cache's revision below etcd's until the next task write.
        if not await common.catch_up(self.store, self.tasks, timeout=common.TERM_CATCH_UP):
            log.warning("task cache still behind etcd; scheduling anyway", key="scheduler",
                        cache=self.tasks.last_revision)
        self.poke()
        try:
            while True:
                await self.wake.wait()
                if self.fatal is not None:
                    raise self.fatal
                while not self.more:
                    now = loop.time()
                    due = min(self.last_event + BATCH_DELAY,
                              (self.first_event or now) + MAX_BATCH_DELAY)
                    if now >= due:
                        break
                    await asyncio.sleep(due - now)
                self.wake.clear()
                self.first_event = None
                self.more = False
                await self.batch()
                if self.more:
                    self.wake.set()
        finally:
            for commit in list(self.commits):
                commit.cancel()
            await asyncio.gather(*self.commits, return_exceptions=True)
            self.commits.clear()
            self.fatal = None  # (an exception holds frames: no cycles left behind)
            # Writes cut off by the end of the term may or may not have landed; the
            # cache will tell. Until it does, those tasks count as what it shows.
            orphaned, self.inflight = self.inflight, {}
            for key in orphaned:
                namespace, _, name = key.partition("/")
                self._recharge(key, self.tasks.get(name, namespace))

    def teardown(self) -> None:
        """Stop following the informers and drop everything, so it is freed now by
        reference counting rather than left to a full garbage collection (``gcpolicy``)."""
        self.detach()
        self.cluster = None
        for table in (self.charges, self.pending, self.inflight, self.failures,
                      self.quarantine):
            table.clear()
        self._failure_heap.clear()

    def _candidates(self) -> list[Resource]:
        out = []
        for key, task in self.pending.items():
            if key in self.inflight:
                continue
            broke = self.quarantine.get(key)
            if broke is not None:
                if broke == task.metadata.resourceVersion:
                    continue
                del self.quarantine[key]
            out.append(task)
            if len(out) >= MAX_BATCH:
                self.more = True
                break
        return out

    def _place(self, cluster: placement.ClusterState,
               batch: list[Resource]) -> placement.ScheduleResult:
        try:
            return cluster.place(batch)
        except Exception:
            log.exception("placement failed for a batch; placing its tasks one by one",
                          key="scheduler", tasks=len(batch))
        result = placement.ScheduleResult({}, {})
        for task in batch:
            try:
                one = cluster.place([task])
            except Exception as exc:
                key = ts.task_key(task)
                log.warning("task cannot be placed (internal error); set aside until it "
                            "changes", key=key, error=str(exc))
                self.quarantine[key] = task.metadata.resourceVersion
                result.unplaced[key] = f"cannot be scheduled: {exc}"
                continue
            result.assignments.update(one.assignments)
            result.unplaced.update(one.unplaced)
        return result

    async def batch(self) -> None:
        cluster = self.cluster or await self.rebuild()
        self._expire_failures()
        batch = self._candidates()
        if not batch:
            return
        started = time.perf_counter()
        by_key = {ts.task_key(t): t for t in batch}
        result = self._place(cluster, batch)
        placed_at = time.perf_counter()
        updates: list[tuple[str, Resource]] = []
        for key, node in result.assignments.items():
            task = by_key[key]
            self.inflight[key] = node
            charge = cluster.charge_of(task, node)  # what ``place`` just charged
            if charge is not None:
                self.charges[key] = charge
            updates.append((key, assigned(task, node)))
        messages: list[tuple[str, Resource]] = []
        for key, reason in result.unplaced.items():
            task = by_key[key]
            if reason.startswith("service ") and reason.endswith(" not found"):
                continue  # the service cache may just lag; the orchestrator cleans orphans
            if task.status.get("message") != reason:
                messages.append((key, with_message(task, reason)))
        if result.assignments or messages:
            log.info("batch placed", key="scheduler", tasks=len(batch),
                     assigned=len(result.assignments), unplaced=len(result.unplaced),
                     messages=len(messages),
                     place_ms=round((placed_at - started) * 1000, 1),
                     peak_rss_mib=resource_mod.getrusage(resource_mod.RUSAGE_SELF).ru_maxrss
                     // 1024)
        for i in range(0, len(updates), common.MAX_OPS):
            await self._submit(updates[i:i + common.MAX_OPS], assignment=True)
        for i in range(0, len(messages), common.MAX_OPS):
            await self._submit(messages[i:i + common.MAX_OPS], assignment=False)

    async def _submit(self, chunk: list[tuple[str, Resource]], assignment: bool) -> None:
        await self.sem.acquire()
        task = asyncio.create_task(self._commit(chunk, assignment))
        self.commits.add(task)
        task.add_done_callback(self.commits.discard)
        await asyncio.sleep(0)  # let informers and finished commits in between chunks

    async def _recommit(self, chunk: list[tuple[str, Resource]]) -> list[str]:
        """A transaction lost a compare: some task changed since it was read. Drop the
        tasks the cache already shows changed (they come back through the pending set if
        they still need a node) and commit the rest again; if even that fails, write them
        one by one. Returns the keys not written."""
        keep: list[tuple[str, Resource]] = []
        failed: list[str] = []
        for key, obj in chunk:
            cached = self.tasks.get(obj.metadata.name, obj.metadata.namespace)
            if (cached is not None
                    and cached.metadata.resourceVersion == obj.metadata.resourceVersion):
                keep.append((key, obj))
            else:
                failed.append(key)
        if not keep:
            return failed
        try:
            await self.store.commit([client.Op("update", common.TASKS, obj)
                                     for _, obj in keep])
            return failed
        except errors.FencedError:
            raise
        except errors.ConflictError:
            pass
        # Still losing: the store group-commits concurrent single writes, and only the
        # ones whose own compare fails fail.
        results = await asyncio.gather(
            *(self.store.update(common.TASKS, obj) for _, obj in keep),
            return_exceptions=True)
        for (key, _), res in zip(keep, results, strict=True):
            if isinstance(res, errors.FencedError):
                raise res from None
            if isinstance(res, BaseException):
                failed.append(key)
        return failed

    async def _commit(self, chunk: list[tuple[str, Resource]], assignment: bool) -> None:
        failed: list[str] = []
        retry_later = False
        try:
            try:
                # share: each assignment is a fresh object nobody touches again.
                await self.store.commit([client.Op("update", common.TASKS, obj)
                                         for _, obj in chunk], share=True)
            except errors.FencedError:
                raise
            except errors.ConflictError:
                failed = await self._recommit(chunk)
            except errors.StoreError as exc:
                log.warning("scheduler transaction failed; retrying", key="scheduler",
                            tasks=len(chunk), error=str(exc), retry_in=RETRY_AFTER)
                failed = [key for key, _ in chunk]
                retry_later = True
        except errors.FencedError as exc:
            self.fatal = exc
            self.wake.set()
            return
        finally:
            self.sem.release()
        if assignment:
            self.placed += len(chunk) - len(failed)
            for key in failed:
                self.inflight.pop(key, None)
                namespace, _, name = key.partition("/")
                self._recharge(key, self.tasks.get(name, namespace))
        if failed:
            if retry_later:
                asyncio.get_running_loop().call_later(RETRY_AFTER, self.poke)
            else:
                self.poke()


class Scheduler:
    """One per controller-manager process: ``spec`` is the RunnableSpec to run."""

    def __init__(self) -> None:
        self.state: _State | None = None
        self.spec = RunnableSpec(name="scheduler", run=self._run)

    async def _run(self, ctx: RunContext) -> None:
        informers = [ctx.informers.informer(info)
                     for info in (common.TASKS, common.NODES, common.SERVICES)]
        for inf in informers:
            await inf.wait_synced()
        gcpolicy.install()
        state = self.state
        if state is None or state.tasks is not informers[0]:
            if state is not None:
                state.teardown()  # another informer factory: another manager
            # First term of this process: follow the informers (this replays what they
            # hold through the handlers, once) and keep following them from now on.
            state = self.state = _State(ctx.store, *informers)
            state.attach()
        await state.run(ctx.store)


def controller_spec() -> RunnableSpec:
    """A fresh scheduler (one per controller-manager process)."""
    return Scheduler().spec
