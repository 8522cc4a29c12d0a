"""The nodes controller: whether each node is alive, from its heartbeat lease.

What it owns: ``status.state`` of Node objects moving between ``ready`` and ``down``, the
``Ready`` condition (reason, message, ``lastTransitionTime``) and ``status.message``
that explain it, the NodeDown/NodeReady Events, and the ``NodeReachable`` condition of
the node's tasks (``reachability``: a down node's live tasks show ``unknown``, since
its agent cannot vouch for them). Nothing else: availability (active, pause, drain) is
written by users, and what happens to the tasks of a down or drained node is the
orchestrator's business (replacements) and the scheduler's (no new placements) — each
loop keeps to its own concern, as in swarmkit.

Why heartbeat *keys*: every agent keeps ``<prefix>/heartbeats/<node>`` attached to an
etcd lease whose TTL is the heartbeat TTL and refreshes the lease every TTL/3. When an
agent dies or is cut off, etcd itself deletes the key one TTL later. This controller
watches that key prefix, so a node is marked down the moment its lease expires — no
timestamps compared across machines, no write per heartbeat, no polling — and marked
ready again the moment its key comes back. It is an elected runnable
(``shoal.runtime.runnable``): the watch runs only while this process holds the ``nodes``
lease, and every write is fenced by that leadership.

Level-triggered: each check compares a node's status with the *current* set of live
heartbeat keys, so a missed or repeated event, a restart or a relist after compaction
all converge on the same answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from shoal.controllers import common
from shoal.controllers.nodes import reachability
from shoal.crds import conditions, resource
from shoal.crds.resource import Resource
from shoal.runtime import cas, events, gcpolicy, runnable
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors, watch

log = rt_logging.get_logger("shoal.controllers.nodes")

NAME: Final = "nodes"
HEARTBEAT_DIR: Final = "heartbeats"
READY: Final = "ready"
DOWN: Final = "down"
CONDITION: Final = "Ready"
#: Node writes in flight at once (1,000 nodes of one agent process fail together).
PARALLEL_WRITES: Final = 64
#: Seconds before a failed status write is tried again.
RETRY_AFTER: Final = 0.5


def heartbeat_prefix(store: client.Store) -> bytes:
    return store.raw_key(HEARTBEAT_DIR) + b"/"


class _Liveness:
    """The set of nodes whose heartbeat key exists, kept by a watch on the key prefix."""

    def __init__(self, store: client.Store, changed: Callable[[str], None]) -> None:
        self.store = store
        self.prefix = heartbeat_prefix(store)
        self.alive: set[str] = set()
        self.synced = asyncio.Event()
        self._changed = changed

    def _name(self, key: bytes) -> str:
        return key[len(self.prefix):].decode(errors="replace")

    async def _relist(self) -> int:
        kvs, revision = await self.store.raw_list(self.prefix)
        fresh = {self._name(kv.key) for kv in kvs}
        differ = fresh ^ self.alive
        self.alive = fresh
        first = not self.synced.is_set()
        self.synced.set()
        if not first:
            for name in differ:
                self._changed(name)
        return revision

    async def run(self) -> None:
        """List, then follow the prefix (``shoal.store.watch`` resumes and relists)."""
        async for batch in watch.follow_prefix(self.store, self.prefix, self._relist,
                                               what="heartbeat watch"):
            for ev in batch:
                name = self._name(ev.key)
                if ev.deleted:
                    self.alive.discard(name)
                else:
                    self.alive.add(name)
                self._changed(name)


async def _each(calls: Iterable[Awaitable[None]]) -> None:
    """Run per-node calls together; each handles its own store errors, but a lost
    leadership (FencedError) ends the run."""
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, errors.FencedError):
            raise result


async def _event(store: client.Store, node: Resource, type_: str, reason: str,
                 message: str) -> None:
    """What ``get events -w`` and ``describe node`` show; best effort (a lost event must
    not hold the node's state back)."""
    try:
        await events.record_event(store, node, type_, reason, message, source=NAME)
    except errors.StoreError as exc:
        log.info("could not record event", key=f"node/{node.name}", reason=reason,
                 error=str(exc))


class _TasksByNode:
    """Which tasks each node holds, kept from the task informer's handlers, so a node
    going down or coming back looks only at its own tasks; a task that arrives out of
    line with its node's state (assigned before the node went down, a relist) asks for
    its node to be swept."""

    def __init__(self, nodes: informer_mod.Informer, sweep: Callable[[str], None]) -> None:
        self._nodes = nodes
        self._sweep = sweep
        self._by_node: dict[str, set[tuple[str | None, str]]] = {}

    def on(self, node: str) -> set[tuple[str | None, str]]:
        return self._by_node.get(node, set())

    def add(self, task: Resource) -> None:
        node = task.spec.get("nodeName")
        if not isinstance(node, str) or not node:
            return
        self._by_node.setdefault(node, set()).add((task.metadata.namespace, task.name))
        if reachability.change(task, self._nodes.get(node)) is not None:
            self._sweep(node)

    def update(self, old: Resource, task: Resource) -> None:
        if old.spec.get("nodeName") != task.spec.get("nodeName"):
            self.delete(old)
        self.add(task)

    def delete(self, task: Resource) -> None:
        node = task.spec.get("nodeName")
        held = self._by_node.get(node) if isinstance(node, str) else None
        if held is not None:
            held.discard((task.metadata.namespace, task.name))
            if not held:
                del self._by_node[str(node)]


def desired(node: Resource, alive: bool) -> tuple[str, bool] | None:
    """(state, Ready condition) the node should get, or None when it already has them."""
    state = READY if alive else DOWN
    cond = conditions.get_condition(node, CONDITION)
    want_cond = "True" if alive else "False"
    # A fresh node without the condition is fine while it is alive: the agent says ready.
    cond_ok = (cond.get("status") == want_cond) if cond is not None else alive
    if node.status.get("state") == state and cond_ok:
        return None
    return state, alive


class NodesController:
    """One per controller-manager: ``spec`` is the RunnableSpec to run."""

    def __init__(self) -> None:
        self.spec = runnable.RunnableSpec(name=NAME, run=self._run)

    async def _run(self, ctx: runnable.RunContext) -> None:
        nodes = ctx.informers.informer(common.NODES)
        tasks = ctx.informers.informer(common.TASKS)
        await nodes.wait_synced()
        await tasks.wait_synced()
        gcpolicy.install()
        todo: set[str] = set()
        sweeps: set[str] = set()  # nodes whose tasks' NodeReachable marks need a look
        wake = asyncio.Event()

        def touch(name: str) -> None:
            todo.add(name)
            sweeps.add(name)
            wake.set()

        def retry(name: str) -> None:
            asyncio.get_running_loop().call_later(RETRY_AFTER, touch, name)

        def sweep(name: str) -> None:
            sweeps.add(name)
            wake.set()

        placed = _TasksByNode(nodes, sweep)
        liveness = _Liveness(ctx.store, touch)
        remove = nodes.add_handlers(lambda n: touch(n.metadata.name),
                                    lambda _o, n: touch(n.metadata.name), None)
        remove_tasks = tasks.add_handlers(placed.add, placed.update, placed.delete)
        watcher = asyncio.create_task(liveness.run(), name="nodes:heartbeats")
        sem = asyncio.Semaphore(PARALLEL_WRITES)
        try:
            await liveness.synced.wait()
            for _, name in nodes.keys():
                todo.add(name)
            wake.set()
            while True:
                await wake.wait()
                wake.clear()
                if watcher.done():
                    watcher.result()  # surface a crash of the watch (it retries otherwise)
                batch, todo = list(todo), set()
                await _each(self._check(ctx.store, nodes, liveness, name, sem, retry)
                            for name in batch)
                swept, sweeps = list(sweeps), set()
                await _each(self._mark_tasks(ctx.store, nodes, tasks, placed, name, sem, sweep)
                            for name in swept)
        finally:
            remove()
            remove_tasks()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _mark_tasks(self, store: client.Store, nodes: informer_mod.Informer,
                          tasks: informer_mod.Informer, placed: _TasksByNode, name: str,
                          sem: asyncio.Semaphore, sweep: Callable[[str], None]) -> None:
        """Mark the live tasks of a down node ``NodeReachable=False``; unmark them once
        it is ready (``reachability``). Written in batches (an agent process serving
        100 hollow nodes of 100 tasks each takes 10,000 tasks down at once); a batch that
        loses a race goes task by task, each decided again at write time."""
        node = nodes.get(name)
        changed: list[Resource] = []
        for namespace, task_name in list(placed.on(name)):
            task = tasks.get(task_name, namespace)
            if task is None or reachability.change(task, node) is None:
                continue
            new = task.deepcopy()
            reachability.apply(new, node)
            changed.append(new)
        for i in range(0, len(changed), common.MAX_OPS):
            chunk = changed[i:i + common.MAX_OPS]
            async with sem:
                try:
                    await store.commit([client.Op("update", common.TASKS, t) for t in chunk])
                    continue
                except errors.FencedError:
                    raise
                except errors.ConflictError:
                    pass  # someone wrote one of them meanwhile: one by one below
                except errors.StoreError as exc:
                    log.warning("task reachability write failed; retrying", node=name,
                                key=f"node/{name}", tasks=len(chunk), error=str(exc))
                    asyncio.get_running_loop().call_later(RETRY_AFTER, sweep, name)
                    return
            for t in chunk:
                await self._mark_one(store, nodes, tasks, t, name, sem, sweep)

    async def _mark_one(self, store: client.Store, nodes: informer_mod.Informer,
                        tasks: informer_mod.Informer, wanted: Resource, name: str,
                        sem: asyncio.Semaphore, sweep: Callable[[str], None]) -> None:
        task = tasks.get(wanted.name, wanted.metadata.namespace)
        if task is None:
            return  # deleted meanwhile

        def mark(t: Resource) -> None:
            reachability.apply(t, nodes.get(name))

        key = f"task/{wanted.metadata.namespace}/{wanted.name}"
        async with sem:
            try:
                await cas.mutate(store, common.TASKS, task, mark)
            except errors.FencedError:
                raise
            except errors.StoreError as exc:
                log.warning("task reachability write failed; retrying", key=key, node=name,
                            error=str(exc))
                asyncio.get_running_loop().call_later(RETRY_AFTER, sweep, name)
            except Exception:
                log.exception("cannot mark task reachability", key=key, node=name)

    async def _check(self, store: client.Store, nodes: informer_mod.Informer,
                     liveness: _Liveness, name: str, sem: asyncio.Semaphore,
                     retry: Callable[[str], None]) -> None:
        """Bring one node's state in line with its heartbeat key."""
        node = nodes.get(name)
        if node is None or desired(node, name in liveness.alive) is None:
            return

        def mutate(obj: Resource) -> None:
            # Decided at write time, against the live set as it is now.
            alive = name in liveness.alive
            if desired(obj, alive) is None:
                return
            now = resource.now_rfc3339()
            if alive:
                obj.status["state"] = READY
                obj.status["message"] = ""
                conditions.set_condition(obj, CONDITION, True, "HeartbeatOK",
                                         "heartbeat lease is live")
            else:
                ttl = obj.status.get("heartbeatTTL")
                within = f" (lease TTL {ttl}s)" if ttl else ""
                message = f"heartbeat lease expired{within}; node down since {now}"
                obj.status["state"] = DOWN
                obj.status["message"] = message
                conditions.set_condition(obj, CONDITION, False, "HeartbeatLost", message)

        async with sem:
            try:
                stored = await cas.mutate(store, common.NODES, node, mutate)
            except errors.FencedError:
                raise
            except errors.StoreError as exc:
                log.warning("node status write failed; retrying", key=f"node/{name}",
                            error=str(exc), retry_in=RETRY_AFTER)
                retry(name)
                return
            except Exception:
                # A node whose status cannot be handled (garbage written straight into
                # etcd) must not stop the others.
                log.exception("cannot update node status", key=f"node/{name}")
                return
        if stored is not None and stored is not node:
            state = stored.status.get("state")
            message = str(stored.status.get("message") or "")
            log.info("node state changed", key=f"node/{name}", state=state, message=message)
            if state == DOWN:
                await _event(store, stored, events.WARNING, "NodeDown", message)
            elif node.status.get("state") == DOWN:
                await _event(store, stored, events.NORMAL, "NodeReady",
                             "heartbeat lease is live again")


def controller_spec() -> runnable.RunnableSpec:
    """A fresh nodes controller (one per controller-manager process)."""
    return NodesController().spec
