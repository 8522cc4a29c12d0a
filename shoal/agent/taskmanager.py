"""The per-node task manager: drives each assigned task through its states with an executor.

Level-triggered, like every loop in Shoal. ``reconcile(key)`` looks at the task as etcd
last showed it, at what this agent has already reported, and at what the executor
observes, and takes the next step (accept, prepare, start, report running, stop...). It
is run from a per-node work queue of task keys, fed by the agent's single watch of its
nodes' task projections, by the executor's ``changes()`` and by a slow periodic resync;
keys are de-duplicated,
failures retried with per-key exponential backoff. Nothing polls a task.

Why it survives being killed at any moment: every executor call is idempotent and keyed
by task uid (``start`` adopts a workload that already exists), and the state written to
etcd only says what has been *done*. A restarted agent re-runs the step it was on; at
worst it repeats an idempotent call, it never starts a second workload.

Status writes never go backwards and never block the state machine: ``_report`` records
the state a task has reached and hands it to the process's
:class:`~shoal.agent.statuswriter.StatusWriter`, which writes it (batched, lingering for
intermediate states; see that module). The keys to reconcile go through a
:class:`~shoal.agent.taskqueue.TaskQueue` per node (see that module for why it is not
the controllers' work queue).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Iterable
from typing import Any, Protocol

import structlog

from shoal.agent.exec.executor import MISSING, Executor, Observed, TaskRejectedError, TaskSpec
from shoal.agent.statuswriter import StatusWriter
from shoal.agent.taskqueue import TaskQueue
from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.crds import template as tpl

log = structlog.get_logger("shoal.agent.taskmanager")

# Swarm's task states in their only order (the agent writes accepted and later ones).
STATES, RANK = ts.STATES, ts.RANK
ACCEPTED, PREPARING, STARTING, RUNNING = ts.ACCEPTED, ts.PREPARING, ts.STARTING, ts.RUNNING
COMPLETE, FAILED, SHUTDOWN, REJECTED = ts.COMPLETE, ts.FAILED, ts.SHUTDOWN, ts.REJECTED
R_ACCEPTED, R_PREPARING = RANK[ACCEPTED], RANK[PREPARING]
R_STARTING, R_RUNNING = RANK[STARTING], RANK[RUNNING]

SERVICE_LABEL = ts.SERVICE_LABEL
UNHEALTHY_MESSAGE = "task: container unhealthy"
# Orphaned workloads (their task is gone) are queued under keys no task can have.
ORPHAN_PREFIX = "\0orphan/"


class InvalidTaskError(Exception):
    """The Task object cannot be run as written (garbage spec): the task is rejected."""


def task_spec(task: resource.Resource, node: str) -> TaskSpec:
    """The executor's view of a Task, or InvalidTaskError naming the field that is wrong.

    Checks what every driver reads (the rest each driver checks as it reads it), through
    the same accessors admission used, so an admitted service's tasks always pass.
    """
    try:
        template = tpl.of(task.spec)
        tpl.image(template)
        tpl.command(template)
        tpl.env(template)
        tpl.stop_grace(template)
    except tpl.TemplateError as exc:
        raise InvalidTaskError(f"invalid task: {exc}") from None
    slot = task.spec.get("slot")
    service = task.metadata.labels.get(SERVICE_LABEL) or task.spec.get("serviceName") or ""
    return TaskSpec(uid=task.metadata.uid, name=task.metadata.name,
                    namespace=task.metadata.namespace or resource.DEFAULT_NAMESPACE,
                    service=str(service), node=node,
                    slot=slot if isinstance(slot, int) and not isinstance(slot, bool) else None,
                    template=template)


def stop_options(task: resource.Resource | None) -> tuple[float, str | None]:
    """(grace seconds, stop signal) of a task; defaults for what cannot be read, since
    stopping must work even for a task whose spec is garbage."""
    try:
        template = tpl.of(task.spec) if task is not None else {}
    except tpl.TemplateError:
        template = {}
    try:
        grace = tpl.stop_grace(template)
    except tpl.TemplateError:
        grace = tpl.DEFAULT_STOP_GRACE
    try:
        signal = tpl.stop_signal(template)
    except tpl.TemplateError:
        signal = None
    return grace, signal


# --- the task manager ---

@dataclasses.dataclass(slots=True)
class _Record:
    """What this agent knows about one task beyond the Task object."""

    uid: str
    reported: str = "new"  # highest state reported by this agent (written or queued)
    rank: int = 0  # RANK[reported]
    workload: bool = False  # the executor may hold a workload for this uid
    stopped: bool = False  # the workload is known stopped (exited or stopped by us)
    failures: int = 0  # consecutive executor errors of the current step
    spec: TaskSpec | None = None  # the executor's view, built once per spec version
    spec_of: Any = None  # the spec dict ``spec`` was built from


class TaskNetworking(Protocol):
    """The node's dataplane as the task manager sees it (``shoal.agent.dataplane``)."""

    def waiting_for(self, task: resource.Resource) -> str | None:
        """Why the task cannot start yet (networks not allocated), or None."""

    def workload_spec(self, task: resource.Resource, spec: TaskSpec) -> TaskSpec:
        """``spec`` with what the workload needs from the network (its resolv.conf)."""

    async def attach(self, task: resource.Resource, observed: Observed) -> None:
        """Plumb a running workload's networks; raises if that cannot be done yet."""

    async def detach(self, task: resource.Resource) -> None:
        """Take the task out of the load balancer (it is about to be stopped)."""


class TaskFilesProvider(Protocol):
    """The node's secret and config files as the task manager sees them
    (``shoal.agent.taskfiles``)."""

    async def prepare(self, task: resource.Resource, spec: TaskSpec) -> TaskSpec:
        """``spec`` with the task's files written and listed; TaskRejectedError if one
        cannot be delivered (missing, unsealed, not opening)."""

    def remove(self, uid: str) -> None:
        """Drop a task's files (its workload is removed)."""

    def sweep(self, keep: Iterable[str]) -> None:
        """Drop the files of every task uid not in ``keep``."""


class TaskManager:
    """All tasks assigned to one node, driven through their states by one executor.

    With ``network`` (a real node's dataplane), a task starts only once its networks are
    allocated (it waits in ``preparing``), is reported running only once its networks
    are plumbed, and leaves the load balancer before it is stopped. With ``files``, a
    task's secrets and configs are written for it just before its workload is created
    (a task whose files cannot be delivered is rejected) and dropped once it is removed.
    """

    def __init__(self, node: str, executor: Executor, writer: StatusWriter,
                 concurrency: int = 32, resync: float = 60.0, max_step_failures: int = 5,
                 max_backoff: float = 30.0, network: TaskNetworking | None = None,
                 files: TaskFilesProvider | None = None) -> None:
        self.node = node
        self.executor = executor
        self.writer = writer
        self.network = network
        self.files = files
        self.log = log.bind(node=node)
        self.resync = resync
        self.max_step_failures = max_step_failures
        self.max_backoff = max_backoff
        self._tasks: dict[str, resource.Resource] = {}
        self._records: dict[str, _Record] = {}
        self._uid_key: dict[str, str] = {}
        self._queue = TaskQueue(self._reconcile_safely, concurrency)
        self._background: list[asyncio.Task[None]] = []
        self._synced = False
        self._retries: dict[str, int] = {}  # keys whose reconcile raised, for backoff

    # --- fed by the agent's task watch ---

    def cached(self, key: str) -> resource.Resource | None:
        return self._tasks.get(key)

    def keys(self) -> Iterable[str]:
        return self._tasks.keys()

    def is_echo(self, key: str, revision: int) -> bool:
        """A watch event at a revision this manager already holds (a resumed watch)."""
        obj = self._tasks.get(key)
        return obj is not None and int(obj.metadata.resourceVersion or 0) >= revision

    def remember_status(self, key: str, uid: str, status: dict[str, Any]) -> None:
        """The status our own report stored for a task.

        Only ever applies to a task still cached under the same uid: the write's reply can
        arrive after the watch has already reported the task deleted (the orchestrator
        deletes a task within milliseconds of reading our ``shutdown``), and putting it
        back would resurrect it here for good — its workload then never removed.
        """
        obj = self._tasks.get(key)
        if obj is None or obj.metadata.uid != uid:
            return
        self._tasks[key] = resource.Resource(obj.kind, obj.metadata, obj.spec, status,
                                             obj.apiVersion)

    def upsert(self, obj: resource.Resource) -> None:
        """A task assigned to this node was added or changed by someone else.

        The projection the agent reads carries no status: the status this node has
        reported for the same task is kept."""
        key = ts.task_key(obj)
        old = self._tasks.get(key)
        if old is not None and old.metadata.uid == obj.metadata.uid:
            if int(old.metadata.resourceVersion or 0) >= int(obj.metadata.resourceVersion or 0):
                return
            if not obj.status:
                obj = resource.Resource(obj.kind, obj.metadata, obj.spec, old.status,
                                        obj.apiVersion)
        elif old is not None:
            self.writer.forget(self, key, old.metadata.uid)  # replaced by a namesake
        self._tasks[key] = obj
        if self._synced:
            self._queue.add(key)

    def delete(self, key: str) -> None:
        old = self._tasks.pop(key, None)
        if old is not None:
            self.writer.forget(self, key, old.metadata.uid)
            if self._synced:
                self._queue.add(key)

    def touch(self, key: str) -> None:
        """Look at a task again (something it waits for, not the task, changed)."""
        if self._synced and key in self._tasks:
            self._queue.add(key)

    def replace(self, objs: Iterable[resource.Resource]) -> None:
        """A full listing (start-up, or after the watch's revision was compacted)."""
        fresh = {ts.task_key(o): o for o in objs}
        gone = [k for k in self._tasks if k not in fresh]
        for key, old in self._tasks.items():
            if key in gone or fresh[key].metadata.uid != old.metadata.uid:
                self.writer.forget(self, key, old.metadata.uid)
        self._tasks = fresh
        if self._synced:
            for key in gone:
                self._queue.add(key)
            for key in fresh:
                self._queue.add(key)

    # --- life cycle ---

    async def start(self) -> None:
        """Adopt what the executor already runs, then start reconciling every known task.

        Called once the agent's first task listing has been routed here, so a workload
        whose task is gone can be told apart from one whose task is merely unseen.
        """
        backoff = 0.2
        while True:
            try:
                managed = await self.executor.list_managed()
                break
            except Exception as exc:  # the driver's daemon may still be starting
                self.log.warning("listing managed workloads failed, retrying", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        by_uid = {t.metadata.uid: k for k, t in self._tasks.items()}
        adopted = orphans = 0
        for wl in managed:
            key = by_uid.get(wl.task_uid)
            if key is not None:
                rec = self._records.setdefault(key, _Record(uid=wl.task_uid))
                rec.workload = True
                self._uid_key[wl.task_uid] = key
                adopted += 1
            else:
                # The task is gone or now belongs elsewhere: stop and remove the workload.
                okey = ORPHAN_PREFIX + wl.task_uid
                self._records[okey] = _Record(uid=wl.task_uid, workload=True)
                self._uid_key[wl.task_uid] = okey
                orphans += 1
                self._queue.add(okey)
        if managed:
            self.log.info("adopted workloads", adopted=adopted, orphaned=orphans)
        if self.files is not None:
            # Files of tasks deleted while no agent looked; a workload still running
            # keeps what it mounted, and orphans are removed below anyway.
            self.files.sweep([*by_uid, *(wl.task_uid for wl in managed)])
        self._synced = True
        for key in list(self._tasks):
            self._queue.add(key)
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._follow_changes()))
        if self.resync > 0:
            self._background.append(loop.create_task(self._resync_loop()))

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._queue.close()

    async def _follow_changes(self) -> None:
        backoff = 0.2
        while True:
            try:
                async for uid in self.executor.changes():
                    key = self._uid_key.get(uid)
                    if key is not None:
                        self._queue.add(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("executor change stream failed, reopening", error=str(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _resync_loop(self) -> None:
        # A safety net for a lost change notification; jittered so a thousand hollow
        # nodes do not resync in the same instant.
        await asyncio.sleep(self.resync * random.uniform(0.5, 1.0))
        while True:
            for key in list(self._records):
                self._queue.add(key)
            await asyncio.sleep(self.resync * random.uniform(0.9, 1.1))

    # --- observation helpers for tests and the agent ---

    def ref(self, key: str) -> str:
        if key.startswith(ORPHAN_PREFIX):
            return f"workload/{key[len(ORPHAN_PREFIX):]}"
        return f"task/{key}"

    def states(self) -> dict[str, str]:
        return {k: r.reported for k, r in self._records.items()
                if not k.startswith(ORPHAN_PREFIX)}

    # --- reconcile ---

    def _report(self, key: str, rec: _Record, state: str, message: str,
                **extra: Any) -> None:
        new_rank = RANK[state]
        if new_rank < rec.rank or (rec.rank > R_RUNNING and state != rec.reported):
            return
        if state != rec.reported:
            self.log.debug("task state", key=self.ref(key), state=state, message=message)
        rec.reported, rec.rank = state, new_rank
        fields: dict[str, Any] = {"state": state, "message": message,
                                  "timestamp": resource.now_rfc3339()}
        fields.update(extra)
        # Intermediate states may linger and be superseded; running and ends are news.
        self.writer.submit(self, key, rec.uid, fields, urgent=new_rank >= R_RUNNING)

    async def _reconcile_safely(self, key: str) -> None:
        try:
            await self.reconcile(key)
            self._retries.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # An executor call (stop, observe...) or our own bug: never take the agent
            # down, retry this key with exponential backoff.
            attempt = self._retries.get(key, 0) + 1
            self._retries[key] = attempt
            delay = min(0.1 * 2 ** min(attempt, 20), self.max_backoff)
            self.log.warning("reconcile failed, retrying", key=self.ref(key), error=str(exc),
                             error_type=type(exc).__name__, attempt=attempt, retry_in=delay)
            self._queue.add_after(key, delay)

    async def _destroy(self, key: str, rec: _Record, task: resource.Resource | None) -> None:
        """Stop and remove a workload whose task is gone."""
        if rec.workload or rec.rank >= R_STARTING:
            grace, signal = stop_options(task)
            await self.executor.stop(rec.uid, grace, signal)
            await self.executor.remove(rec.uid)
            self.log.info("removed workload of deleted task", key=self.ref(key), uid=rec.uid)
        if self.files is not None:
            self.files.remove(rec.uid)
        self._uid_key.pop(rec.uid, None)

    async def reconcile(self, key: str) -> None:
        """Take the next step for one task (the docstring of the module says which)."""
        task = self._tasks.get(key)
        rec = self._records.get(key)
        if task is None:
            if rec is not None:
                await self._destroy(key, rec, None)
                del self._records[key]
            return
        uid = task.metadata.uid
        if rec is None or rec.uid != uid:
            if rec is not None:  # deleted and re-created under the same name
                await self._destroy(key, rec, None)
            rec = _Record(uid=uid)
            self._records[key] = rec
            self._uid_key[uid] = key
        etcd_state = task.status.get("state")
        etcd_rank = RANK.get(etcd_state, 0) if isinstance(etcd_state, str) else 0
        if etcd_rank > rec.rank:
            rec.reported, rec.rank = STATES[etcd_rank], etcd_rank
        desired = task.spec.get("desiredState") or RUNNING
        desired_rank = RANK.get(desired, R_RUNNING) if isinstance(desired, str) else R_RUNNING

        if rec.rank > R_RUNNING:
            if desired_rank > R_RUNNING and rec.workload and not rec.stopped:
                # e.g. written failed by a previous run that died before stopping it
                obs = await self.executor.observe(uid)
                if obs.state in ("running", "created"):
                    grace, signal = stop_options(task)
                    await self.executor.stop(uid, grace, signal)
                rec.stopped = True
            return

        if desired_rank > R_RUNNING:
            await self._shutdown(key, rec, task)
            return

        if rec.spec is None or rec.spec_of is not task.spec:
            try:
                rec.spec = task_spec(task, self.node)
            except InvalidTaskError as exc:
                self.log.warning("task rejected", key=self.ref(key), reason=str(exc))
                self._report(key, rec, REJECTED, str(exc), err=str(exc))
                return
            rec.spec_of = task.spec
        spec = rec.spec

        # A task is never taken past its desired state: one desired "preparing" (Swarm
        # uses "ready" so) is prepared but not started until the desired state moves on.
        if desired_rank < R_ACCEPTED:
            return
        if rec.rank < R_STARTING:
            if rec.rank < R_ACCEPTED:
                self._report(key, rec, ACCEPTED, "accepted")
            if desired_rank < R_PREPARING:
                return
            if rec.rank < R_PREPARING:
                self._report(key, rec, PREPARING, "preparing")
            try:
                await self.executor.prepare(spec)
            except TaskRejectedError as exc:
                self.log.info("task rejected", key=self.ref(key), reason=str(exc))
                self._report(key, rec, REJECTED, str(exc), err=str(exc))
                return
            except Exception as exc:
                self._step_failed(key, rec, "preparing", exc)
                return
            rec.failures = 0
            if desired_rank < R_STARTING:
                return  # prepared; started once the desired state says so
            waiting = self.network.waiting_for(task) if self.network is not None else None
            if waiting is not None:
                # Stays preparing; the dataplane touches the task when that changes.
                self._report(key, rec, PREPARING, waiting)
                return
            self._report(key, rec, STARTING, "starting")

        obs = await self.executor.observe(uid) if rec.workload else MISSING
        if obs.state == "missing":
            if rec.rank >= R_RUNNING:
                self._report(key, rec, FAILED, "task: workload disappeared",
                             err="the workload of a running task is gone")
                return
            try:
                if self.files is not None:
                    spec = await self.files.prepare(task, spec)
                if self.network is not None:
                    spec = self.network.workload_spec(task, spec)
                obs = await self.executor.start(spec)
            except TaskRejectedError as exc:
                self.log.info("task rejected", key=self.ref(key), reason=str(exc))
                self._report(key, rec, REJECTED, str(exc), err=str(exc))
                return
            except Exception as exc:
                self._step_failed(key, rec, "starting", exc)
                return
            rec.failures = 0
            rec.workload = True
        if self.network is not None and obs.state == "running":
            await self.network.attach(task, obs)  # raises (retried) until plumbed
        await self._observed(key, rec, task, obs)

    def _step_failed(self, key: str, rec: _Record, step: str, exc: Exception) -> None:
        """An executor error that is not a rejection: retry with backoff, then give up.

        Swarm fails a task whose container will not start; the orchestrator's restart
        policy then decides. Retrying a few times first rides out a daemon hiccup.
        """
        rec.failures += 1
        if rec.failures >= self.max_step_failures:
            message = f"{step} failed: {exc}"
            self.log.warning("task failed after repeated executor errors", key=self.ref(key),
                             step=step, error=str(exc), attempts=rec.failures)
            self._report(key, rec, FAILED, message, err=message)
            return
        delay = min(0.2 * 2 ** rec.failures, self.max_backoff)
        self.log.warning("executor error, retrying", key=self.ref(key), step=step,
                         error=str(exc), error_type=type(exc).__name__,
                         attempt=rec.failures, retry_in=delay)
        self._queue.add_after(key, delay)

    async def _observed(self, key: str, rec: _Record, task: resource.Resource,
                        obs: Observed) -> None:
        extra: dict[str, Any] = {"containerId": obs.workload_id} if obs.workload_id else {}
        if obs.state == "exited":
            rec.stopped = True
            code = obs.exit_code if obs.exit_code is not None else -1
            if code == 0:
                self._report(key, rec, COMPLETE, "finished", exitCode=0, **extra)
            else:
                message = f"task: non-zero exit ({code})"
                self._report(key, rec, FAILED, message, exitCode=code,
                             err=obs.error or message, **extra)
            return
        if obs.state == "running":
            if obs.health == "unhealthy":
                if self.network is not None:
                    await self.network.detach(task)  # out of the balancer first
                grace, signal = stop_options(task)
                await self.executor.stop(rec.uid, grace, signal)
                rec.stopped = True
                after = await self.executor.observe(rec.uid)
                self.log.info("task unhealthy, stopped", key=self.ref(key))
                self._report(key, rec, FAILED, UNHEALTHY_MESSAGE, err=UNHEALTHY_MESSAGE,
                             exitCode=after.exit_code, **extra)
                return
            if obs.health == "starting":
                if extra:
                    self._report(key, rec, STARTING, "starting", **extra)
                return  # the executor tells us (changes()) when the health check settles
            self._report(key, rec, RUNNING, "started", **extra)
            return
        # "created": started but not running yet; changes() wakes us when it is.
        if extra:
            self._report(key, rec, STARTING, "starting", **extra)

    async def _shutdown(self, key: str, rec: _Record, task: resource.Resource) -> None:
        """Desired state is past running: stop the workload, report shutdown.

        The stopped workload is kept until its Task is deleted (task history clean-up),
        so its logs stay readable, as Swarm keeps the containers of its task history.
        """
        extra: dict[str, Any] = {}
        if rec.workload or rec.rank >= R_STARTING:
            obs = await self.executor.observe(rec.uid)
            if obs.workload_id:
                extra["containerId"] = obs.workload_id
            if obs.state == "exited" and not rec.stopped:
                # It ended on its own before we stopped it: report what really happened.
                await self._observed(key, rec, task, obs)
                return
            if obs.state in ("running", "created"):
                if self.network is not None:
                    await self.network.detach(task)  # out of the balancer first
                grace, signal = stop_options(task)
                await self.executor.stop(rec.uid, grace, signal)
                obs = await self.executor.observe(rec.uid)
                if obs.exit_code is not None:
                    extra["exitCode"] = obs.exit_code
            rec.workload = obs.state != "missing"
            rec.stopped = True
        self._report(key, rec, SHUTDOWN, "shutdown", **extra)
