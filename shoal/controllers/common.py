"""What the built-in controllers share: kind lookups, a task index, bounded commits.

Three controllers read the same few kinds and write tasks in etcd transactions; the
helpers here keep them from growing three slightly different versions of each:

* ``TASKS``/``SERVICES``/``NODES``: the built-in kinds, looked up once;
* ``TaskIndex``: tasks grouped by service and the services with tasks on each node, kept
  current from the process's shared task informer — the orchestrator's reads of "every
  task of this service" and "which services run on this node" must not scan 100,000
  cached tasks;
* ``commit_all``: apply a list of transactions (each at most 127 operations), several in
  flight at once, and report which failed;
* ``wait_for_revision``: a controller that just wrote must not plan from a cache that
  has not yet seen its own writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Final

from shoal.crds import kinds
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.runtime import informer as informer_mod
from shoal.store import client, codec, errors, etcd

#: etcd allows 128 operations per transaction; a fenced write spends one compare on the
#: leader lease, which leaves 127 for the objects.
MAX_OPS: Final = client.MAX_TXN_OPS - 1

ServiceKey = tuple[str, str]  # (namespace, name)

#: How long a controller starting a leadership term waits for its task cache to show
#: what etcd holds (see ``catch_up``) before acting anyway.
TERM_CATCH_UP: Final = 5.0
#: Values ``written_revision`` reads at most (newest first) to skip undecodable ones.
CHECKED_VALUES: Final = 16


@functools.cache
def _registry() -> kinds.Registry:
    return kinds.Registry.builtin()


def kind(name: str) -> kinds.KindInfo:
    """A built-in kind by any of its names."""
    return _registry().lookup(name)


TASKS: Final = kind("tasks")
SERVICES: Final = kind("services")
NODES: Final = kind("nodes")


def service_key_of(task: Resource) -> ServiceKey | None:
    name = ts.service_name(task)
    return None if name is None else (ts.namespace_of(task), name)


class TaskIndex:
    """Tasks by service (with their ``TaskFacts``), and services with tasks desired running
    by node.

    Fed by the shared task informer's handlers (attached with ``attach``); reads are
    plain dict lookups. Objects are the informer's own (shared, read-only).
    """

    def __init__(self, flag: Callable[[Resource], bool] | None = None) -> None:
        self.by_service: dict[ServiceKey, dict[str, ts.TaskFacts]] = {}
        # node -> service -> tasks of the service desired running on the node
        self.by_node: dict[str, dict[ServiceKey, int]] = {}
        # service -> names of its tasks ``flag`` picks out (the orchestrator: malformed)
        self.flagged: dict[ServiceKey, set[str]] = {}
        self._flag = flag
        self._detach: Callable[[], None] | None = None
        self.informer: informer_mod.Informer | None = None

    def attach(self, tasks: informer_mod.Informer) -> None:
        """Follow ``tasks`` (replays what it already holds); detach from any earlier one."""
        if self.informer is tasks:
            return
        self.detach()
        self.by_service.clear()
        self.by_node.clear()
        self.flagged.clear()
        self.informer = tasks
        self._detach = tasks.add_handlers(self._added, self._updated, self._deleted)

    def detach(self) -> None:
        if self._detach is not None:
            self._detach()
        self._detach = None
        self.informer = None

    def tasks_of(self, key: ServiceKey) -> list[Resource]:
        return [f.task for f in self.by_service.get(key, {}).values()]

    def facts_of(self, key: ServiceKey) -> list[ts.TaskFacts]:
        return list(self.by_service.get(key, {}).values())

    def services_on(self, node: str) -> list[ServiceKey]:
        return list(self.by_node.get(node, {}))

    def flagged_of(self, key: ServiceKey) -> list[Resource]:
        tasks = self.by_service.get(key, {})
        return [tasks[name].task for name in self.flagged.get(key, ()) if name in tasks]

    # --- handlers ---

    def _added(self, task: Resource, facts: ts.TaskFacts | None = None) -> None:
        key = service_key_of(task)
        if key is None:
            return
        if facts is None:
            facts = ts.facts_of(task)
        self.by_service.setdefault(key, {})[task.metadata.name] = facts
        if self._flag is not None and self._flag(task):
            self.flagged.setdefault(key, set()).add(task.metadata.name)
        if facts.node is not None and facts.active:
            per_node = self.by_node.setdefault(facts.node, {})
            per_node[key] = per_node.get(key, 0) + 1

    def _deleted(self, task: Resource) -> None:
        key = service_key_of(task)
        if key is None:
            return
        name = task.metadata.name
        tasks = self.by_service.get(key)
        known = tasks.pop(name, None) if tasks is not None else None
        if tasks is not None and not tasks:
            del self.by_service[key]
        self._unflag(key, name)
        facts = known if known is not None else ts.facts_of(task)
        if facts.node is not None and facts.active:
            per_node = self.by_node.get(facts.node)
            if per_node is not None:
                left = per_node.get(key, 0) - 1
                if left > 0:
                    per_node[key] = left
                else:
                    per_node.pop(key, None)
                    if not per_node:
                        del self.by_node[facts.node]

    def _updated(self, old: Resource, new: Resource) -> None:
        key = service_key_of(new)
        tasks = self.by_service.get(key) if key is not None else None
        name = new.metadata.name
        known = tasks.get(name) if tasks is not None else None
        facts = ts.facts_of(new)
        if (key is not None and tasks is not None and known is not None
                and key == service_key_of(old)
                and facts.node == known.node and facts.active == known.active):
            # The usual update (a state report, an assignment seen again): same service,
            # node and desire, so only the facts and the flag change.
            tasks[name] = facts
            if self._flag is not None:
                if self._flag(new):
                    self.flagged.setdefault(key, set()).add(name)
                elif key in self.flagged:
                    self._unflag(key, name)
            return
        self._deleted(old)
        self._added(new, facts)

    def _unflag(self, key: ServiceKey, name: str) -> None:
        flagged = self.flagged.get(key)
        if flagged is not None:
            flagged.discard(name)
            if not flagged:
                del self.flagged[key]


async def wait_for_revision(informer: informer_mod.Informer, revision: int,
                            timeout: float = 2.0) -> bool:
    """Wait until ``informer`` has applied every event up to ``revision``; False on timeout.

    Used before planning from a cache that may not yet hold this controller's own last
    writes. The informer exposes no waiter, so this polls in small steps; it returns at
    once in the common case (the cache is usually ahead by the time it is asked).
    """
    if informer.last_revision >= revision:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while informer.last_revision < revision:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def written_revision(store: client.Store, info: kinds.KindInfo,
                           namespace: str | None = None, name_prefix: str = "",
                           above: int = 0) -> int:
    """The newest ``mod_revision`` among the readable stored objects of a kind (optionally
    only those of one namespace whose names start with ``name_prefix``); ``above`` when
    no readable object is newer than that.

    An informer has caught up with every write to those objects once its
    ``last_revision`` reaches this. (etcd's global revision will not do: a watch only
    advances on writes under its own prefix.) Reads keys only, then the values of the
    few objects newer than ``above``, newest first, so that a value the informer skips
    as undecodable does not keep the answer out of its reach.
    """
    start = store.kind_prefix(info, namespace) + name_prefix.encode()
    kvs, _, _ = await store.etcd.range(start, etcd.prefix_end(start), keys_only=True)
    newer = sorted((kv for kv in kvs if kv.mod_revision > above),
                   key=lambda kv: kv.mod_revision, reverse=True)
    for kv in newer[:CHECKED_VALUES]:
        full = await store.raw_get(kv.key)
        if full is None:
            continue  # deleted meanwhile
        try:
            codec.decode(full.value, full.mod_revision)
        except codec.UndecodableError:
            continue
        return full.mod_revision
    return newer[CHECKED_VALUES].mod_revision if len(newer) > CHECKED_VALUES else above


async def catch_up(store: client.Store, informer: informer_mod.Informer,
                   timeout: float = 30.0, namespace: str | None = None,
                   name_prefix: str = "") -> bool:
    """Wait until ``informer`` shows every object of its kind as etcd holds it now (or
    those selected as in ``written_revision``); False on timeout.

    A controller starting a leadership term calls it before acting: the cache must show
    the last writes of the previous leader (fenced, so all made before this term began),
    or the new leader redoes them and loses every compare-and-swap.
    """
    revision = await written_revision(store, informer.info, namespace, name_prefix,
                                      above=informer.last_revision)
    return await wait_for_revision(informer, revision, timeout)


@dataclasses.dataclass
class CommitOutcome:
    """What ``commit_all`` managed: the highest revision written, and the failures."""

    revision: int = 0
    conflicts: list[int] = dataclasses.field(default_factory=list)  # indexes into the txns
    errors: list[tuple[int, Exception]] = dataclasses.field(default_factory=list)


async def commit_all(store: client.Store, txns: Sequence[Sequence[client.Op]], *,
                     limit: asyncio.Semaphore | None = None,
                     share: bool = False) -> CommitOutcome:
    """Commit every transaction in ``txns`` (each ≤ ``MAX_OPS`` operations), concurrently.

    ``limit`` bounds how many are in flight (shared between callers, it bounds a whole
    controller). A transaction that loses a compare is reported in ``conflicts`` and
    changes nothing; the others are unaffected. ``FencedError`` (leadership lost) is
    raised: nothing more may be written. ``share`` is ``Store.commit``'s: the ops'
    objects are never touched again, so the store's watches may take them as they are.
    """
    outcome = CommitOutcome()
    sem = limit or asyncio.Semaphore(8)

    async def one(i: int, ops: Sequence[client.Op]) -> None:
        async with sem:
            try:
                stored = await store.commit(ops, share=share)
            except errors.FencedError:
                raise
            except errors.ConflictError:
                outcome.conflicts.append(i)
                return
            except errors.StoreError as exc:
                outcome.errors.append((i, exc))
                return
        for obj in stored:
            if obj is not None:
                outcome.revision = max(outcome.revision, int(obj.metadata.resourceVersion))
                break

    results = await asyncio.gather(*(one(i, ops) for i, ops in enumerate(txns) if ops),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return outcome
