"""The updater loop: rolls a changed Service spec out over its tasks, and back.

What it owns: replacing tasks that run an out-of-date spec (dirty, ``taskspec``), batch
by batch (``batches.decide``, by ``spec.updateConfig``, or ``spec.rollbackConfig``
during a rollback); a Service's ``status.update``, ``Progressing`` condition,
``status.revisions`` and ``status.revision`` (``revisions``); rollbacks, asked for with
the ``shoal.io/rollback-request`` annotation or made by the ``rollback`` failure action.
It also carries out rebalancing moves (``moves``, ``rebalance``): when a service asks
for them and no update is in flight, clean running tasks are replaced start-first, the
replacement marked ``shoal.io/moved-from``, and ``status.rebalance`` says how far it
got. It does not keep slot counts, restart ended tasks or trim history (the orchestrator
does), nor place tasks (the scheduler does: the replacement goes to the least loaded
node because the old task still counts where it is). docs/updater.md is the contract.

One reconcile per Service, level-triggered: read the service and all its tasks from the
shared caches, record the revision, carry out a rollback request, let the pure
``batches.decide`` pick the slots, and write. What wakes a service: its own change, and
a task of a service whose rollout is under way, or that rebalances, changing state (a
replacement running lets the next batch go, a failure pauses or rolls back); a node
changing (one joins, is activated again) wakes the services that rebalance; the delay
between batches and the rebalancing pace come back as ``Result(requeue_after=...)``.

Crash safety: every decision is derived from etcd (the tasks, the service's spec,
annotations and status), so a restarted updater resumes where the last one stopped.
A stop-first replacement is one transaction: the old task's desired state becomes
shutdown (compare-and-swap on its revision) and the replacement is created
(deterministic name ``<svc>.<slot>.<n>``, create-if-absent); a start-first one marks the
old task ``shoal.io/replaced-by`` (the same compare) and creates the replacement, so a
slot changed meanwhile — by the orchestrator restarting it, or a stale pass of this
loop — fails the whole transaction, which is retried from a fresher cache. After
writing, the next pass of that service waits until the cache has seen the writes. A
rollback is one compare-and-swap write of the service: the revision's sections into
``spec``, the request removed, ``shoal.io/rollback-generation`` and the change cause set.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from shoal.controllers import common, nodefacts, taskspec
from shoal.controllers.updater import batches, moves, revisions
from shoal.controllers.updater import config as cfg
from shoal.controllers.updater import rebalance as rb
from shoal.crds import conditions, resource
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.runtime import cas
from shoal.runtime import logging as rt_logging
from shoal.runtime.reconcile import Context, ControllerSpec, Result
from shoal.store import client, errors

log = rt_logging.get_logger("shoal.controllers.updater")

PROGRESSING: Final = "Progressing"
#: How long a reconcile waits for the task cache to show this controller's last writes
#: before it steps aside and comes back later.
CACHE_WAIT: Final = 0.25
PARALLEL_TXNS: Final = 4
#: While a stop-first replacement waits for its old task to stop, look again this often.
GATE_RECHECK: Final = 1.0
REPLICATED: Final = "replicated"
GLOBAL: Final = "global"


class Updater:
    """One per controller-manager process: ``spec`` is the ControllerSpec to run."""

    def __init__(self, workers: int = 4) -> None:
        self.index = common.TaskIndex()
        # Keys of services whose rollout is under way: a task of theirs changing state
        # may move it on. Rebuilt from etcd after a restart (every service is reconciled
        # when the controller starts).
        self._rolling: set[str] = set()
        # Keys of services that rebalance (enabled, or a request pending): a node change
        # may give them somewhere to move to, and their tasks' changes move them on.
        self._rebalancing: set[str] = set()
        self._written: dict[str, int] = {}  # service key -> revision of our last write
        self._sem: asyncio.Semaphore | None = None
        self._caught_up: client.Fence | bool | None = False
        self.spec = ControllerSpec(
            name="updater", kind="services", reconcile=self.reconcile, workers=workers,
            watches=(("tasks", self._map_task), ("nodes", self._map_node)))

    def _map_task(self, task: Resource) -> list[str]:
        if not self._rolling and not self._rebalancing:
            return []
        key = common.service_key_of(task)
        wake = None if key is None else f"{key[0]}/{key[1]}"
        return [wake] if wake in self._rolling or wake in self._rebalancing else []

    def _map_node(self, node: Resource) -> list[str]:
        return sorted(self._rebalancing)

    # --- reconcile ---

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        tasks_informer = ctx.informers.informer(common.TASKS)
        self.index.attach(tasks_informer)
        if self._sem is None:
            self._sem = asyncio.Semaphore(PARALLEL_TXNS)
        if self._caught_up != ctx.fence:
            # A new term: the cache must show the last leader's writes (fenced, so all
            # made before this term began), or this one redoes them and loses.
            if not await common.catch_up(ctx.store, tasks_informer, common.TERM_CATCH_UP):
                log.warning("task cache still behind etcd; updating anyway", key=key)
            self._caught_up = ctx.fence
        written = self._written.get(key)
        if written is not None and not await common.wait_for_revision(
                tasks_informer, written, timeout=CACHE_WAIT):
            return Result(requeue_after=CACHE_WAIT)
        svc = ctx.get()
        if svc is None:
            svc = await ctx.fetch()
        if svc is None or svc.metadata.deletionTimestamp:
            self._rolling.discard(key)
            self._rebalancing.discard(key)
            self._written.pop(key, None)
            return None
        namespace = svc.metadata.namespace or resource.DEFAULT_NAMESPACE
        uid = sys.intern(svc.metadata.uid)
        tasks = [f.task for f in self.index.facts_of((namespace, svc.metadata.name))
                 if f.owner is None or f.owner == uid]
        mode = svc.spec.get("mode") or REPLICATED
        if mode not in (REPLICATED, GLOBAL):
            return None  # the orchestrator marks the service invalid

        history = revisions.readable(svc.status.get("revisions"))
        limit = revisions.history_limit(svc.spec.get("revisionHistoryLimit"))
        recorded, current_rev = revisions.record(
            history, taskspec.revision_spec(svc), svc.metadata.generation,
            svc.metadata.annotations.get(cfg.CHANGE_CAUSE), resource.now_rfc3339(), limit)
        request = svc.metadata.annotations.get(cfg.ROLLBACK_REQUEST)
        if request is not None:
            return await self._rollback(ctx, svc, recorded, current_rev, request, None)

        config, problems = cfg.for_service_with_problems(svc)
        rollback = cfg.is_rollback(svc)
        wanted = taskspec.Wanted(svc)
        now = time.time()
        nodes = nodefacts.readable_nodes(ctx.informers.informer(common.NODES).list())
        moving = moves.plan(svc, tasks, nodes, now, wanted.dirty)
        if moving.active:
            self._rebalancing.add(key)
        else:
            self._rebalancing.discard(key)
        views = batches.views(tasks, wanted, mode == GLOBAL, moving.slots)
        ready = {n.metadata.name for n in nodes if n.status.get("state") == "ready"}
        starts = [v.current for v in views if batches.ready_to_start(v, ready)]
        # Stop-first replacements still held for their old task: looked at again on
        # every task event of the service and, level-triggered, every GATE_RECHECK
        # seconds, so a missed wake-up (the cached status not yet showing this rollout)
        # costs a second, not a stuck rollout.
        held = any(ts.desired_state(v.current) == ts.PREPARING for v in views)
        started = await self._start(ctx, key, starts) if starts else True
        resumed = ts.parse_timestamp(svc.metadata.annotations.get(cfg.RESUMED_AT))
        failed = batches.failures((t for t in tasks if ts.has_ended(t)),
                                  svc.metadata.generation, config.monitor, resumed)
        previous = svc.status.get("update")
        previous = previous if isinstance(previous, dict) else None
        reason = svc.metadata.annotations.get(cfg.ROLLBACK_REASON)
        decision = batches.decide(
            views, failed, now, config, previous, rollback=rollback,
            paused=svc.spec.get("paused") is True, service=svc.metadata.name,
            rollback_message=(f"rollback started: update rolled back due to failure of "
                              f"{reason}" if reason else "rollback started: manually "
                              "requested rollback"),
            generation=svc.metadata.generation)
        if decision is not None and decision.rollback_after is not None:
            return await self._rollback(ctx, svc, recorded, current_rev, revisions.PREVIOUS,
                                        decision.rollback_after)
        if held or (decision is not None and decision.state in batches.UNDER_WAY):
            self._rolling.add(key)
        else:
            self._rolling.discard(key)
        ok = True
        if decision is not None and decision.replace:
            ok = await self._replace(ctx, key, svc, views, decision)
        if moving.slots and not any(v.dirty for v in views):
            # Moves alone are no rollout: status.update keeps telling of the last one.
            decision = None
        await self._set_status(ctx, svc, decision, recorded, current_rev,
                               [*problems, *moving.problems],
                               automatic=bool(reason) and rollback,
                               rebalance=moving.status if ok else None)
        if not ok or not started:
            return Result(requeue=True)
        waits = [w for w in (decision.requeue_after if decision is not None else None,
                             moving.requeue_after, GATE_RECHECK if held else None)
                 if w is not None]
        if waits:
            return Result(requeue_after=max(min(waits), 0.01))
        return None

    # --- replacing tasks ---

    def _ops(self, svc: Resource, view: batches.SlotView,
             replacement: batches.Replacement) -> list[client.Op]:
        generation = svc.metadata.generation
        old = view.current
        name = taskspec.next_name(svc.metadata.name, view.key, list(view.tasks))
        meta = old.metadata.copy()
        spec = old.spec
        if replacement.order == "stop-first" or view.others:
            # Stop-first; or start-first where an older task still runs: ``old`` is an
            # earlier replacement that never took over, and the slot keeps one old task.
            meta.annotations[taskspec.SHUTDOWN_REASON] = (
                f"updating to service generation {generation}"
                if replacement.reason == batches.DIRTY else f"moved: replaced by {name}")
            spec = {**old.spec, "desiredState": ts.SHUTDOWN}
        else:
            # Start-first: the old task keeps running; the orchestrator stops it once the
            # replacement runs. The annotation's write compares the old task's revision.
            meta.annotations[taskspec.REPLACED_BY] = name
        marked = Resource(kind=old.kind, apiVersion=old.apiVersion, metadata=meta,
                          spec=spec, status=old.status)
        why = (f"updates {old.metadata.name} (service generation {generation})"
               if replacement.reason == batches.DIRTY else f"moves {old.metadata.name}")
        node = view.key if isinstance(view.key, str) else None
        slot = view.key if isinstance(view.key, int) else 0
        # A move's replacement says where it came from: the rebalancing pace counts them.
        notes = ({rb.MOVED_FROM: ts.node_name_of(old) or ""}
                 if replacement.reason == batches.MOVE else None)
        new = taskspec.new_task(svc, name, slot, node, why, notes)
        if replacement.order == "stop-first" and not view.others:
            # Prepared, not started, until the old task has stopped (``ready_to_start``).
            new.spec = {**new.spec, "desiredState": ts.PREPARING}
        # The update goes first: were the transaction ever split, the old task is told
        # to stop before the new one exists.
        return [client.Op("update", common.TASKS, marked),
                client.Op("create", common.TASKS, new)]

    async def _start(self, ctx: Context, key: str, tasks: Sequence[Resource]) -> bool:
        """Let prepared stop-first replacements start (desired ``running``), each a
        compare-and-swap on the version read."""
        txns = [[client.Op("update", common.TASKS, Resource(
            kind=t.kind, apiVersion=t.apiVersion, metadata=t.metadata.copy(),
            spec={**t.spec, "desiredState": ts.RUNNING}, status=t.status))] for t in tasks]
        assert self._sem is not None
        outcome = await common.commit_all(ctx.store, txns, limit=self._sem, share=True)
        if outcome.revision:
            self._written[key] = max(self._written.get(key, 0), outcome.revision)
        ctx.log.info("old tasks stopped; replacements start",
                     tasks=[t.metadata.name for t in tasks],
                     complete=not outcome.conflicts and not outcome.errors)
        return not outcome.conflicts and not outcome.errors

    async def _replace(self, ctx: Context, key: str, svc: Resource,
                       views: Sequence[batches.SlotView],
                       decision: batches.Decision) -> bool:
        by_key = {v.key: v for v in views}
        txns = [self._ops(svc, by_key[r.key], r) for r in decision.replace]
        assert self._sem is not None
        outcome = await common.commit_all(ctx.store, txns, limit=self._sem, share=True)
        if outcome.revision:
            self._written[key] = max(self._written.get(key, 0), outcome.revision)
        for i, exc in outcome.errors:
            ctx.log.warning("replacement failed; will retry", slot=decision.replace[i].key,
                            error=str(exc))
        if outcome.conflicts:
            ctx.log.info("replacement lost a compare (the slot changed); will retry",
                         slots=[decision.replace[i].key for i in outcome.conflicts])
        ctx.log.info("tasks replaced", slots=[r.key for r in decision.replace],
                     order=[r.order for r in decision.replace], state=decision.state,
                     updated=decision.updated, total=decision.total)
        return not outcome.conflicts and not outcome.errors

    # --- rollback ---

    async def _rollback(self, ctx: Context, svc: Resource, history: list[dict[str, Any]],
                        current: int, request: str, failure: str | None) -> Result | None:
        """Carry out a rollback (asked for: ``failure`` None) in one CAS write of the
        service; a request that cannot be carried out is refused and removed."""
        try:
            target = revisions.target(history, current, request)
        except revisions.RollbackError as exc:
            return await self._refuse(ctx, svc, history, current, str(exc), failure)
        number = target["revision"]
        automatic = failure is not None
        message = (f"rollback started: update rolled back due to failure of {failure}"
                   if automatic else "rollback started: manually requested rollback")
        stamp = resource.now_rfc3339()

        def roll(obj: Resource) -> None:
            notes = obj.metadata.annotations
            notes.pop(cfg.ROLLBACK_REQUEST, None)
            revisions.apply_to(obj.spec, target)
            # The store bumps the generation by one when the spec changes (it does: the
            # target is not the current revision), so this names the write's own.
            notes[cfg.ROLLBACK_GENERATION] = str(obj.metadata.generation + 1)
            notes[cfg.CHANGE_CAUSE] = f"rollback to revision {number}"
            if automatic:
                notes[cfg.ROLLBACK_REASON] = str(failure)
            else:
                notes.pop(cfg.ROLLBACK_REASON, None)
            obj.status["revisions"] = history
            obj.status["revision"] = current
            obj.status["update"] = {"state": batches.ROLLBACK_STARTED, "message": message,
                                    "generation": obj.metadata.generation + 1,
                                    "revision": number, "startedAt": stamp,
                                    "timestamp": stamp}
            conditions.set_condition(obj, PROGRESSING, True, "Updating", message)

        stored = await cas.mutate(ctx.store, common.SERVICES, svc, roll)
        if stored is None:
            return None
        ctx.log.warning("rolling back", to_revision=number, automatic=automatic,
                        reason=failure or "requested", generation=stored.metadata.generation)
        await self._event(ctx, stored, "Normal" if not automatic else "Warning",
                          "RollbackStarted", f"rolling back to revision {number}"
                          + (f": update failed: {failure}" if automatic else ""))
        self._rolling.add(ctx.key)
        return None

    async def _refuse(self, ctx: Context, svc: Resource, history: list[dict[str, Any]],
                      current: int, why: str, failure: str | None) -> Result | None:
        if failure is not None:
            # The failure action could not roll back (no earlier revision): pause.
            message = f"update paused due to failure of {failure} (cannot roll back: {why})"

            def pause(obj: Resource) -> None:
                obj.status["revisions"] = history
                obj.status["revision"] = current
                update = dict(obj.status.get("update") or {})
                if update.get("message") == message:
                    return
                update.update(state=batches.PAUSED, message=message,
                              timestamp=resource.now_rfc3339())
                obj.status["update"] = update
                conditions.set_condition(obj, PROGRESSING, False, "UpdatePaused", message)
            await cas.mutate(ctx.store, common.SERVICES, svc, pause)
            return None
        request = svc.metadata.annotations.get(cfg.ROLLBACK_REQUEST)
        message = f"rollback request {request!r} refused: {why}"
        ctx.log.warning("rollback refused", request=request, reason=why)

        def drop(obj: Resource) -> None:
            obj.metadata.annotations.pop(cfg.ROLLBACK_REQUEST, None)
            obj.status["revisions"] = history
            obj.status["revision"] = current
            conditions.set_condition(obj, PROGRESSING, False, "RollbackRefused", message)
        stored = await cas.mutate(ctx.store, common.SERVICES, svc, drop)
        if stored is not None:
            await self._event(ctx, stored, "Warning", "RollbackRefused", message)
        return None

    async def _event(self, ctx: Context, obj: Resource, type_: str, reason: str,
                     message: str) -> None:
        try:
            await ctx.record_event(obj, type_, reason, message)
        except errors.StoreError as exc:  # events are best effort
            ctx.log.info("could not record event", reason=reason, error=str(exc))

    # --- status ---

    async def _set_status(self, ctx: Context, svc: Resource,
                          decision: batches.Decision | None,
                          history: list[dict[str, Any]], current: int,
                          problems: Sequence[str], automatic: bool,
                          rebalance: dict[str, Any] | None = None) -> None:
        """``status.update``, ``Progressing``, ``status.revisions``/``revision`` and
        ``status.rebalance`` (None: as it is), each written only when it changes (one
        write for all)."""
        update = svc.status.get("update")
        update = dict(update) if isinstance(update, dict) else None
        cond: tuple[bool, str, str] | None = None
        if decision is not None:
            wanted = decision.status()
            same = update is not None and all(update.get(k) == v for k, v in wanted.items())
            same = same and update is not None and (
                update.get("generation") == svc.metadata.generation)
            if not same:
                stamp = resource.now_rfc3339()
                was = update or {}
                fresh = was.get("generation") != svc.metadata.generation or was.get(
                    "state") not in batches.UNDER_WAY
                fields = {**wanted, "generation": svc.metadata.generation,
                          "revision": current, "timestamp": stamp,
                          "startedAt": stamp if fresh and decision.state in batches.UNDER_WAY
                          else was.get("startedAt", stamp)}
                if decision.state in (batches.COMPLETED, batches.ROLLBACK_COMPLETED):
                    fields["completedAt"] = stamp
                if problems:
                    fields["message"] = f"{fields['message']} ({'; '.join(problems)})"
                update = fields
                if decision.state in (batches.PAUSED, batches.ROLLBACK_PAUSED):
                    ctx.log.warning("rollout paused", reason=decision.message)
                    await self._event(ctx, svc, "Warning", "UpdatePaused", decision.message)
                else:
                    ctx.log.info("rollout", state=decision.state, updated=decision.updated,
                                 total=decision.total)
            ok, reason = batches.progressing(decision.state, decision.message, automatic)
            note = decision.message
            if reason == "RolledBack":
                # The service runs, but not what was asked for: say which task failed.
                note = (f"update rolled back due to failure of "
                        f"{svc.metadata.annotations.get(cfg.ROLLBACK_REASON)}")
            cond = (ok, reason, note)
        have = conditions.get_condition(svc, PROGRESSING)
        cond_same = cond is None or (
            have is not None and have.get("status") == ("True" if cond[0] else "False")
            and have.get("reason") == cond[1] and have.get("message") == cond[2])
        if (update == svc.status.get("update") and cond_same
                and svc.status.get("revisions") == history
                and svc.status.get("revision") == current
                and (rebalance is None or rebalance == svc.status.get("rebalance"))):
            return
        if rebalance is not None and rebalance != svc.status.get("rebalance"):
            ctx.log.info("rebalance", moves=rebalance.get("moves"),
                         handled=rebalance.get("handled"), waiting=rebalance.get("message"))

        def put(obj: Resource) -> None:
            if update is not None:
                obj.status["update"] = update
            obj.status["revisions"] = history
            obj.status["revision"] = current
            if cond is not None:
                conditions.set_condition(obj, PROGRESSING, *cond)
            if rebalance is not None:
                obj.status["rebalance"] = rebalance
        await ctx.update_status(svc, put, observed_generation=False)


def controller_spec(workers: int = 4) -> ControllerSpec:
    """A fresh updater (one per controller-manager process)."""
    return Updater(workers).spec

