"""The distributor: copies each Secret and Config to the nodes whose tasks use them.

What it owns: the keys ``<p>/nodes/<node>/secrets/<ns>/<name>`` and
``<p>/nodes/<node>/configs/<ns>/<name>`` -- a node's copy of an object one of its live
tasks mounts (``copies.py`` says what a copy holds). It writes a copy when a task that
needs it is assigned (or its source changes) and deletes it once no live task on that
node names it. Nothing else: the agent reads the copies (``shoal.agent.taskfiles``), and
a worker's etcd user may read its own copies and no Secret or Config object.

How: an elected runnable (``shoal.runtime.runnable``). An index kept by the shared
informers' handlers counts, per copy, the live tasks naming it; a handler only marks
copies dirty, and one loop brings each dirty copy in line (put, or delete) in fenced
transactions of up to 127 keys. What is in etcd is listed once per term; afterwards
this controller is the only writer of these keys, so it remembers what it wrote.

Why a crash at any point is safe: every decision compares wanted copies with the
listing a new term starts from; a put is whole and a delete idempotent, so a write
repeated after a crash changes nothing. An agent that finds no copy yet retries (the
task stays ``preparing`` a moment); a tombstone makes it reject the task at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson

from shoal.controllers import common
from shoal.controllers.distributor import copies
from shoal.crds.resource import Resource
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.runtime import runnable
from shoal.store import client, codec, errors, etcd, projections

log = rt_logging.get_logger("shoal.controllers.distributor")

NAME: Final = "distributor"
#: Seconds before a batch that could not be written (etcd away) is tried again.
RETRY_AFTER: Final = 0.5
SECRETS: Final = common.kind("secrets")
CONFIGS: Final = common.kind("configs")


def copy_key(store: client.Store, ref: copies.Ref) -> bytes:
    return projections.node_prefix(store.prefix, ref.node) + (
        f"{ref.section}/{ref.namespace}/{ref.name}".encode())


class _Index:
    """Live tasks per copy, from the task informer's handlers."""

    def __init__(self, touch: Any) -> None:
        self.by_task: dict[tuple[str, str], frozenset[copies.Ref]] = {}
        self.count: dict[copies.Ref, int] = {}
        self.by_source: dict[tuple[str, str, str], set[copies.Ref]] = {}
        self._touch = touch

    def set(self, task: Resource) -> None:
        key = (task.metadata.namespace or "default", task.name)
        node = projections.usable_node(task.spec.get("nodeName"))
        self._replace(key, copies.wanted(task, node))

    def drop(self, task: Resource) -> None:
        self._replace((task.metadata.namespace or "default", task.name), frozenset())

    def _replace(self, key: tuple[str, str], refs: frozenset[copies.Ref]) -> None:
        old = self.by_task.get(key, frozenset())
        if old == refs:
            return
        if refs:
            self.by_task[key] = refs
        else:
            self.by_task.pop(key, None)
        for ref in old - refs:
            left = self.count.get(ref, 0) - 1
            if left <= 0:
                self.count.pop(ref, None)
                users = self.by_source.get((ref.section, ref.namespace, ref.name))
                if users is not None:
                    users.discard(ref)
                    if not users:
                        del self.by_source[(ref.section, ref.namespace, ref.name)]
            else:
                self.count[ref] = left
            self._touch(ref)
        for ref in refs - old:
            self.count[ref] = self.count.get(ref, 0) + 1
            self.by_source.setdefault((ref.section, ref.namespace, ref.name), set()).add(ref)
            self._touch(ref)


class DistributorController:
    """One per controller-manager: ``spec`` is the RunnableSpec to run."""

    def __init__(self) -> None:
        self.spec = runnable.RunnableSpec(name=NAME, run=self._run)

    async def _run(self, ctx: runnable.RunContext) -> None:
        tasks = ctx.informers.informer(common.TASKS)
        sources = {"secrets": ctx.informers.informer(SECRETS),
                   "configs": ctx.informers.informer(CONFIGS)}
        for inf in (tasks, *sources.values()):
            await inf.wait_synced()
        dirty: set[copies.Ref] = set()
        wake = asyncio.Event()

        def touch(ref: copies.Ref) -> None:
            dirty.add(ref)
            wake.set()

        index = _Index(touch)

        def source_changed(section: str, obj: Resource) -> None:
            for ref in index.by_source.get(
                    (section, obj.metadata.namespace or "default", obj.name), ()):
                touch(ref)

        removers = [tasks.add_handlers(index.set, lambda _o, n: index.set(n), index.drop)]
        for section, inf in sources.items():
            removers.append(inf.add_handlers(
                lambda o, s=section: source_changed(s, o),  # type: ignore[misc]
                lambda _o, n, s=section: source_changed(s, n),  # type: ignore[misc]
                lambda o, s=section: source_changed(s, o)))  # type: ignore[misc]
        try:
            written = await self._list(ctx.store)
            dirty.update(written)  # stale copies left by an earlier term
            wake.set()
            while True:
                await wake.wait()
                wake.clear()
                batch, dirty = list(dirty), set()
                await self._sync(ctx, index, sources, written, batch, touch)
        finally:
            for remove in removers:
                remove()

    async def _list(self, store: client.Store) -> dict[copies.Ref, str | None]:
        """Every copy in etcd -> the source version it records (a new term's start)."""
        nodes = projections.nodes_prefix(store.prefix)
        start, end = nodes, etcd.prefix_end(nodes)
        out: dict[copies.Ref, str | None] = {}
        revision = 0
        while True:
            kvs, rev, more = await store.etcd.range_raw(start, end, revision, 5000)
            revision = revision or rev
            for kv in kvs:
                where = projections.parse_node_key(nodes, kv.key)
                if where is None or where.section not in copies.SECTIONS:
                    continue
                try:
                    data = orjson.loads(kv.value)
                except orjson.JSONDecodeError:
                    data = None
                out[copies.Ref(*where)] = (copies.recorded_version(data)
                                           if isinstance(data, dict) else None)
            if not more or not kvs:
                return out
            start = kvs[-1].key + b"\0"

    async def _sync(self, ctx: runnable.RunContext, index: _Index,
                    sources: dict[str, informer_mod.Informer],
                    written: dict[copies.Ref, str | None], refs: list[copies.Ref],
                    touch: Any) -> None:
        """Put or delete each dirty copy so it matches what its node's tasks need."""
        ops: list[tuple[copies.Ref, etcd.Op, str | None]] = []
        for ref in refs:
            if index.count.get(ref, 0) > 0:
                source = sources[ref.section].get(ref.name, ref.namespace)
                version = copies.version_of(source)
                if written.get(ref) == version and ref in written:
                    continue
                value = codec.encode(copies.copy_of(source, ref))
                ops.append((ref, etcd.op_put(copy_key(ctx.store, ref), value), version))
            elif ref in written:
                ops.append((ref, etcd.op_delete(copy_key(ctx.store, ref)), None))
        for i in range(0, len(ops), common.MAX_OPS):
            chunk = ops[i:i + common.MAX_OPS]
            compares = ([etcd.cmp_lease(ctx.fence.key, ctx.fence.lease)]
                        if ctx.fence is not None else [])
            try:
                ok, _, _ = await ctx.store.txn(compares, [op for _, op, _ in chunk])
            except errors.UnavailableError as exc:
                log.warning("distributing copies failed; retrying", copies=len(chunk),
                            key=f"node/{chunk[0][0].node}", error=str(exc))
                loop = asyncio.get_running_loop()
                for ref, _, _ in chunk:
                    loop.call_later(RETRY_AFTER, touch, ref)
                continue
            if not ok:
                assert ctx.fence is not None
                raise errors.FencedError("distribute", ctx.fence.key.decode())
            for ref, _op, made in chunk:
                if made is None:
                    written.pop(ref, None)
                else:
                    written[ref] = made
                log.info("copy " + ("removed" if made is None else "written"),
                         key=f"node/{ref.node}",
                         object=f"{ref.section}/{ref.namespace}/{ref.name}")


def controller_spec() -> runnable.RunnableSpec:
    """A fresh distributor (one per controller-manager process)."""
    return DistributorController().spec
