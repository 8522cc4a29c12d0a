"""The orchestrator loop: keeps every Service's tasks matching its spec.

What it owns: creating Tasks (``pending``, for the scheduler), telling them to stop
(``spec.desiredState: shutdown``) and deleting old ones; the ``shoal.io/tasks`` finalizer
on Services; a Service's ``Valid`` condition. It does not place tasks (the scheduler
does), judge node health (the nodes controller does), replace tasks that run an
out-of-date spec (the updater does: a dirty task that runs is left alone) or run
anything (agents do). It ends a start-first overlap, though: once the newer task of a
slot runs, the older one is told to stop.

One reconcile per Service, level-triggered, in the swarmkit mould: read the service, all
its tasks (history included) and the nodes from the shared caches, let the pure
``slots.plan_service`` decide (replicated slots or one task per node for global
services, restart policy, moves off down/drained nodes, history trimming), then write
the plan in etcd transactions. Handing off:

* a Service change wakes its own key; a Node change wakes every global service and every
  service with a task desired running on that node (a drained or down node's replicas
  are replaced at once; a node joining gets its global tasks);
* a Task change wakes its service only when the orchestrator has something to do about
  it: it ended (restart policy, history), it was told to stop or it was deleted, it is
  malformed or was made by someone else, or it reached running in a service with a
  start-first overlap. The normal march pending -> assigned -> running does not
  otherwise, so 100,000 tasks starting do not re-plan their services 300,000 times;
* delayed restarts come back through ``Result(requeue_after=...)``.

Crash safety: each slot's shutdown and its replacement's create are written in one
transaction, so no reader — and no crash between writes — ever sees a slot with two
tasks desired running; new task names are deterministic (``<service>.<slot>.<n>``,
``<service>.<node>.<n>``), so a stale or duplicate pass collides on create-if-absent
instead of adding a second task. After writing, the next pass of that service waits
until the cache has seen the writes. Deleting a Service: its finalizer keeps it until
every task is gone — running ones are told to stop and deleted once they have (or at
once when their node is down or gone), so ``swctl delete service/x`` leaves no tasks.

A service whose spec does not pass admission (written straight into etcd, say) gets
``Valid=False`` with the field errors and its tasks are left alone; a malformed task
gets ``Valid=False`` on itself and is dealt with by the plan (a replicated task without
a usable slot is stopped). Nothing malformed stops the loop.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

from shoal.controllers import common, nodefacts, taskspec
from shoal.controllers.orchestrator import restart, slots
from shoal.crds import admission, conditions, kinds, resource
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.runtime import cas, gcpolicy, status
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.runtime.reconcile import Context, ControllerSpec, Result
from shoal.store import client, errors

log = rt_logging.get_logger("shoal.controllers.orchestrator")

FINALIZER: Final = "shoal.io/tasks"
SHUTDOWN_REASON: Final = taskspec.SHUTDOWN_REASON
VALID: Final = "Valid"
#: Transactions one orchestrator keeps in flight across all services.
PARALLEL_TXNS: Final = 8
#: How long a reconcile waits for the task cache to show this controller's last writes
#: before it steps aside and comes back later.
CACHE_WAIT: Final = 0.25
#: While a deleting service waits for its tasks to stop, look again this often even if
#: no task changes (its node may go down meanwhile, making the tasks deletable).
FINALIZE_RECHECK: Final = 2.0


def _int_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def task_problems(task: Resource) -> list[str]:
    """What is malformed about a task's spec (empty when nothing is)."""
    spec = task.spec
    slot, gen = spec.get("slot"), spec.get("serviceGeneration")
    template, node = spec.get("template"), spec.get("nodeName")
    # Hot (every task event): the well-formed case in a few type checks.
    if ((slot is None or type(slot) is int) and (gen is None or type(gen) is int)
            and (template is None or type(template) is dict)
            and (node is None or type(node) is str)):
        return []
    out = []
    if not _int_or_none(spec.get("slot")):
        out.append(f"spec.slot must be an integer, got {spec.get('slot')!r}")
    if not _int_or_none(spec.get("serviceGeneration")):
        out.append(f"spec.serviceGeneration must be an integer, got "
                   f"{spec.get('serviceGeneration')!r}")
    if spec.get("template") is not None and not isinstance(spec.get("template"), dict):
        out.append("spec.template must be an object")
    node = spec.get("nodeName")
    if node is not None and not isinstance(node, str):
        out.append(f"spec.nodeName must be a string, got {node!r}")
    return out


_QUIET_STATES: Final = frozenset(ts.STATES[ts.RANK[ts.PENDING]:ts.RUNNING_RANK + 1])
_RUNNING_DESIRED: Final = frozenset(ts.STATES[:ts.RUNNING_RANK + 1])


def _interesting(task: Resource) -> bool:
    """Whether a task change may need the orchestrator (see the module docstring)."""
    return (task.status.get("state") not in _QUIET_STATES
            or (task.spec.get("desiredState") or ts.RUNNING) not in _RUNNING_DESIRED
            or bool(task_problems(task)))


def _failed(probe: asyncio.Future[bool]) -> bool:
    """A finished catch-up probe that could not even ask etcd (it is tried again)."""
    return probe.cancelled() or probe.exception() is not None


def _node_usable(task: Resource, nodes: informer_mod.Informer) -> bool:
    """The task has no node yet, or its node is ready and not drained."""
    name = ts.node_name_of(task)
    if name is None:
        return True
    node = nodes.get(name)
    return node is not None and slots.node_usable(node)


def _node_down_or_gone(task: Resource, nodes: dict[str, Resource]) -> bool:
    name = ts.node_name_of(task)
    if name is None:
        return True
    node = nodes.get(name)
    return node is None or node.status.get("state") != "ready"


class Orchestrator:
    """One per controller-manager process: ``spec`` is the ControllerSpec to run."""

    def __init__(self, workers: int = 8) -> None:
        self.index = common.TaskIndex(flag=lambda t: bool(task_problems(t)))
        self._global: set[str] = set()  # keys of global services, for node changes
        # Keys of services with a start-first overlap: a task of theirs reaching running
        # ends it, so that (normally quiet) step wakes them.
        self._rolling: set[str] = set()
        self._written: dict[str, int] = {}  # service key -> revision of our last write
        self._valid: dict[str, tuple[str, int, list[str]]] = {}  # key -> (uid, gen, errs)
        self._registry = kinds.Registry.builtin()
        self._sem: asyncio.Semaphore | None = None
        self._nodes: informer_mod.Informer | None = None
        self._nodes_seen: tuple[tuple[int, int, int], slots.NodeView] | None = None
        # The fence of the term whose start the task cache has caught up with (False: none
        # yet; None is the fence of a controller run without leader election).
        self._term: client.Fence | bool | None = False
        self._catching_up: tuple[client.Fence | None, asyncio.Future[bool]] | None = None
        self.spec = ControllerSpec(
            name="orchestrator", kind="services", reconcile=self.reconcile,
            workers=workers, watches=(("tasks", self._map_task), ("nodes", self._map_node)))

    # --- what wakes which service ---

    def _map_task(self, task: Resource) -> list[str]:
        informer, nodes = self.index.informer, self._nodes
        if (informer is not None and nodes is not None and not _interesting(task)
                and informer.get(task.metadata.name, task.metadata.namespace) is not None
                and _node_usable(task, nodes)):
            if not self._rolling or task.status.get("state") != ts.RUNNING:
                return []  # the normal march of a task: nothing to plan (checked first: hot)
            key = common.service_key_of(task)
            wake = None if key is None else f"{key[0]}/{key[1]}"
            return [wake] if wake in self._rolling else []
        # (not cached any more: it was deleted; on a lost node: the task cache can learn
        # of the assignment after the node change was handled)
        key = common.service_key_of(task)
        return [] if key is None else [f"{key[0]}/{key[1]}"]

    def _map_node(self, node: Resource) -> list[str]:
        keys = {f"{ns}/{name}" for ns, name in self.index.services_on(node.metadata.name)}
        return sorted(keys | self._global)

    # --- reconcile ---

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        tasks_informer = ctx.informers.informer(common.TASKS)
        self.index.attach(tasks_informer)
        self._nodes = ctx.informers.informer(common.NODES)
        gcpolicy.install()
        if self._sem is None:
            self._sem = asyncio.Semaphore(PARALLEL_TXNS)
        if self._term != ctx.fence and not await self._caught_up(ctx, tasks_informer):
            return Result(requeue_after=CACHE_WAIT)
        written = self._written.get(key)
        if written is not None and not await common.wait_for_revision(
                tasks_informer, written, timeout=CACHE_WAIT):
            # Planning from a cache without our own last writes would only redo them
            # (and lose on create-if-absent): look again once the cache has caught up.
            ctx.log.debug("task cache behind this controller's writes; waiting",
                          revision=written, cache=tasks_informer.last_revision)
            return Result(requeue_after=CACHE_WAIT)
        svc = ctx.get()
        if svc is None:
            svc = await ctx.fetch()  # the service cache may lag the task cache
        namespace, name = ctx.namespace or resource.DEFAULT_NAMESPACE, ctx.name
        facts = self.index.facts_of((namespace, name))
        if svc is None:
            self._global.discard(key)
            self._rolling.discard(key)
            if not facts:
                self._written.pop(key, None)
                self._valid.pop(key, None)
                return None
            ctx.log.info("service is gone; removing its tasks", tasks=len(facts))
            return await self._remove_tasks(ctx, [f.task for f in facts])
        if svc.metadata.deletionTimestamp:
            return await self._finalize(ctx, svc, [f.task for f in facts])

        if (svc.spec.get("mode") or slots.REPLICATED) == slots.GLOBAL:
            self._global.add(key)
        else:
            self._global.discard(key)
        if FINALIZER not in svc.metadata.finalizers:
            stored = await ctx.add_finalizer(svc, FINALIZER)
            if stored is None:
                return None
            svc = stored

        uid = sys.intern(svc.metadata.uid)  # interned as the facts' owners are: fast ==
        mine = facts
        strays = [f.task for f in facts if uid and f.owner is not None and f.owner != uid]
        if strays:
            mine = [f for f in facts if f.owner is None or f.owner == uid]
        result: Result | None = None
        if strays:
            ctx.log.info("removing tasks of an earlier service of the same name",
                         tasks=len(strays))
            result = await self._remove_tasks(ctx, strays)

        problems = self._spec_problems(key, svc)
        if problems:
            await self._set_valid(ctx, svc, problems)
            return result
        nodes = self._readable_nodes(ctx.informers.informer(common.NODES))
        started = time.perf_counter()
        plan = slots.plan_service_facts(svc, mine, nodes, now=time.time())
        plan_ms = (time.perf_counter() - started) * 1000
        ok = await self._apply(ctx, key, svc, plan, plan_ms)
        if plan.overlaps:
            self._rolling.add(key)
        else:
            self._rolling.discard(key)
        await self._set_valid(ctx, svc, plan.problems)
        await self._mark_bad_tasks(ctx, self.index.flagged_of((namespace, name)))
        if not ok:
            return Result(requeue=True)
        if plan.requeue_after is not None:
            return Result(requeue_after=max(plan.requeue_after, 0.01))
        return result

    def _readable_nodes(self, nodes: informer_mod.Informer) -> slots.NodeView:
        """The readable cached nodes, recomputed only when the node cache has changed:
        a node going down re-plans a hundred services at once, all with the same nodes."""
        stamp = (id(nodes), nodes.last_revision, len(nodes))
        if self._nodes_seen is None or self._nodes_seen[0] != stamp:
            self._nodes_seen = (stamp, slots.NodeView.of(nodefacts.readable_nodes(nodes.list())))
        return self._nodes_seen[1]

    async def _caught_up(self, ctx: Context, tasks: informer_mod.Informer) -> bool:
        """True once the task cache shows etcd as of this term's start (one revision
        probe per term, shared by all workers)."""
        fence = ctx.fence
        entry = self._catching_up
        if entry is None or entry[0] != fence or (entry[1].done() and _failed(entry[1])):
            entry = self._catching_up = (fence, asyncio.ensure_future(
                common.catch_up(ctx.store, tasks, timeout=common.TERM_CATCH_UP)))
        probe = entry[1]
        await asyncio.wait({probe}, timeout=CACHE_WAIT)
        if not probe.done() or _failed(probe):
            return False
        if not probe.result():
            # Bounded, as in the scheduler: a skipped undecodable task can hold the
            # cache's revision back; the compare-and-swap writes keep this safe.
            log.warning("task cache still behind etcd; orchestrating anyway",
                        key=ctx.key, cache=tasks.last_revision)
        self._term = fence
        self._catching_up = None
        return True

    # --- checks ---

    def _spec_problems(self, key: str, svc: Resource) -> list[str]:
        """Admission errors of the service as stored (cached per uid and generation)."""
        cached = self._valid.get(key)
        stamp = (svc.metadata.uid, svc.metadata.generation)
        if cached is not None and cached[:2] == stamp:
            return cached[2]
        doc = svc.to_dict()
        doc["status"] = {}  # status is this controller's own output, not the user's input
        try:
            admission.admit(doc, self._registry)
            found: list[str] = []
        except admission.ValidationError as exc:
            found = [str(e) for e in exc.errors] or [str(exc)]
        except Exception as exc:  # a validator bug must not take the orchestrator down
            found = [f"cannot validate: {exc}"]
        self._valid[key] = (*stamp, found)
        return found

    async def _set_valid(self, ctx: Context, svc: Resource,
                         problems: Sequence[str]) -> None:
        if problems:
            message = "; ".join(problems)
            cond = status.Condition(VALID, False, "InvalidSpec", message)
        else:
            cond = status.Condition(VALID, True, "Reconciled", "")
        current = conditions.get_condition(svc, VALID)
        if (current is not None and current.get("status") == ("False" if problems else "True")
                and current.get("message") == cond.message
                and svc.status.get("observedGeneration") == svc.metadata.generation):
            return
        if problems:
            ctx.log.warning("service spec cannot be acted on", problems=list(problems))
        await ctx.update_status(svc, conditions=[cond])

    async def _mark_bad_tasks(self, ctx: Context, tasks: Iterable[Resource]) -> None:
        for task in tasks:
            problems = task_problems(task)
            if not problems:
                continue
            message = "; ".join(problems)
            current = conditions.get_condition(task, VALID)
            if current is not None and current.get("message") == message:
                continue
            ctx.log.warning("malformed task", task=task.ref, problems=problems)

            def mark(obj: Resource, message: str = message) -> None:
                conditions.set_condition(obj, VALID, False, "InvalidSpec", message)
                if not obj.status.get("state"):
                    obj.status["message"] = message
            try:
                await cas.mutate(ctx.store, common.TASKS, task, mark)
            except errors.FencedError:
                raise
            except errors.StoreError as exc:
                ctx.log.info("could not mark malformed task", task=task.ref, error=str(exc))

    # --- writing a plan ---

    @staticmethod
    def _new_task(svc: Resource, create: slots.Create) -> Resource:
        return taskspec.new_task(svc, create.name, create.slot, create.node_name,
                                 create.reason, create.annotations)

    @staticmethod
    def _stopped(shutdown: slots.Shutdown) -> Resource:
        task = shutdown.task
        meta = task.metadata.copy()
        meta.annotations.update(shutdown.annotations)
        meta.annotations[SHUTDOWN_REASON] = shutdown.reason
        return Resource(kind=task.kind, apiVersion=task.apiVersion, metadata=meta,
                        spec={**task.spec, "desiredState": ts.SHUTDOWN}, status=task.status)

    def _transactions(self, svc: Resource, plan: slots.Plan) -> list[list[client.Op]]:
        """The plan as transactions: each slot's shutdowns and create in the same one."""
        groups: dict[tuple[str, Any], list[client.Op]] = {}
        for sd in plan.shutdowns:
            slot = ts.slot_of(sd.task)
            group = ("slot", slot) if slot > 0 else (
                "node", ts.node_name_of(sd.task) or sd.task.metadata.name)
            groups.setdefault(group, []).append(
                client.Op("update", common.TASKS, self._stopped(sd)))
        for create in plan.creates:
            group = ("node", create.node_name) if create.node_name else ("slot", create.slot)
            # The create goes last in its group: if a group ever had to be split, the
            # old tasks are told to stop before the new one exists.
            groups.setdefault(group, []).append(
                client.Op("create", common.TASKS, self._new_task(svc, create)))
        txns: list[list[client.Op]] = []
        current: list[client.Op] = []
        for ops in groups.values():
            if len(current) + len(ops) > common.MAX_OPS:
                if current:
                    txns.append(current)
                current = []
            while len(ops) > common.MAX_OPS:  # pathological: a slot with >126 duplicates
                txns.append(ops[:common.MAX_OPS])
                ops = ops[common.MAX_OPS:]
            current.extend(ops)
        if current:
            txns.append(current)
        deletes = [client.Op("delete", common.TASKS, t) for t in plan.deletes]
        txns += [deletes[i:i + common.MAX_OPS] for i in range(0, len(deletes),
                                                               common.MAX_OPS)]
        return txns

    async def _commit(self, ctx: Context, key: str,
                      txns: Sequence[Sequence[client.Op]]) -> bool:
        if not txns:
            return True
        assert self._sem is not None
        # share: every op's object is built for this write alone and dropped after it.
        outcome = await common.commit_all(ctx.store, txns, limit=self._sem, share=True)
        if outcome.revision:
            self._written[key] = max(self._written.get(key, 0), outcome.revision)
        for i, exc in outcome.errors:
            ctx.log.warning("task transaction failed; will retry", ops=len(txns[i]),
                            error=str(exc))
        if outcome.conflicts:
            ctx.log.info("task transaction lost a compare (stale cache); will retry",
                         transactions=len(outcome.conflicts))
        return not outcome.conflicts and not outcome.errors

    async def _apply(self, ctx: Context, key: str, svc: Resource,
                     plan: slots.Plan, plan_ms: float = 0.0) -> bool:
        if plan.empty:
            return True
        started = time.perf_counter()
        txns = self._transactions(svc, plan)
        ok = await self._commit(ctx, key, txns)
        ctx.log.info("service reconciled", created=len(plan.creates),
                     shut_down=len(plan.shutdowns), deleted=len(plan.deletes),
                     transactions=len(txns), complete=ok, plan_ms=round(plan_ms, 2),
                     write_ms=round((time.perf_counter() - started) * 1000, 2))
        for sd in plan.shutdowns:
            if restart.NO_RESTART in sd.annotations:
                await self._event(ctx, svc, "RestartLimit",
                                  f"slot of {sd.task.metadata.name}: {sd.reason}")
        return ok

    async def _event(self, ctx: Context, obj: Resource, reason: str,
                     message: str) -> None:
        try:
            await ctx.record_event(obj, "Warning", reason, message)
        except errors.StoreError as exc:  # events are best effort
            ctx.log.info("could not record event", reason=reason, error=str(exc))

    # --- removing tasks (deleted service, or one that is gone) ---

    async def _remove_tasks(self, ctx: Context,
                            tasks: Sequence[Resource]) -> Result | None:
        """Stop and delete ``tasks``; a Result to look again while some still stop."""
        nodes = {n.metadata.name: n for n in ctx.informers.informer(common.NODES).list()}
        stops: list[client.Op] = []
        deletes: list[client.Op] = []
        waiting = 0
        for task in tasks:
            if ts.has_ended(task) or _node_down_or_gone(task, nodes):
                # No agent will report on it again (or it never had one): forget it now.
                deletes.append(client.Op("delete", common.TASKS, task))
            elif ts.is_active_desired(task):
                stops.append(client.Op("update", common.TASKS, self._stopped(
                    slots.Shutdown(task, "service deleted"))))
                waiting += 1
            else:
                waiting += 1
        ops = stops + deletes
        txns = [ops[i:i + common.MAX_OPS] for i in range(0, len(ops), common.MAX_OPS)]
        ok = await self._commit(ctx, ctx.key, txns)
        if not ok:
            return Result(requeue=True)
        if waiting:
            return Result(requeue_after=FINALIZE_RECHECK)
        return None

    async def _finalize(self, ctx: Context, svc: Resource,
                        tasks: Sequence[Resource]) -> Result | None:
        self._global.discard(ctx.key)
        self._rolling.discard(ctx.key)
        if FINALIZER not in svc.metadata.finalizers:
            return None
        if not tasks:
            # The cache may not show tasks created or deleted a moment ago: bring it up
            # to etcd's present before concluding that none are left.
            await common.catch_up(ctx.store, ctx.informers.informer(common.TASKS),
                                  timeout=5.0, namespace=ctx.namespace,
                                  name_prefix=f"{ctx.name}.")
            tasks = self.index.tasks_of((ctx.namespace or resource.DEFAULT_NAMESPACE,
                                         ctx.name))
        if tasks:
            ctx.log.info("service deleted; removing its tasks", tasks=len(tasks))
            return await self._remove_tasks(ctx, tasks)
        await ctx.remove_finalizer(svc, FINALIZER)
        self._written.pop(ctx.key, None)
        self._valid.pop(ctx.key, None)
        ctx.log.info("service's tasks all gone; finalizer removed")
        return None


def controller_spec(workers: int = 8) -> ControllerSpec:
    """A fresh orchestrator (one per controller-manager process)."""
    return Orchestrator(workers).spec
