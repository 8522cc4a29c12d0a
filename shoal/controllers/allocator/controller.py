"""The allocator controller: every network resource the cluster hands out, persisted in
the objects it belongs to (field shapes: ``shoal.crds.networking``).

What it owns:

* the ``ingress`` Network: created when no Network has ``spec.ingress`` (Swarm has one by
  default; deleting it brings a fresh one back);
* per Network: subnet, gateway, VNI, VIP block (``status``), and each hosting node's own
  address on it (``status.nodeAddresses``): nodes running tasks of the network, and every
  node on the ingress network while some service publishes an ingress port (the routing
  mesh answers on every node);
* per Task: an address on each network of its service, plus ``ingress`` when the service
  publishes ports (``spec.networks``), written while the task is pending or assigned -- the
  agent keeps a task in ``preparing`` until it is there. Released when the task ends or
  is deleted;
* per Service: a VIP on each of its networks unless ``dnsrr``, and its ingress ports (the
  requested ones or picks from 30000-32767): ``status.endpoint``.

Why one loop and not a reconcile per object: allocations are a cluster-wide resource --
two tasks reconciled concurrently must never be handed one address -- and the IPAM's
state is rebuilt from the objects, not stored anywhere else. So, like swarmkit's
allocator, it is a single elected runnable (``shoal.runtime.runnable``, lease
``allocator``): at the start of a term it rebuilds the books
(:class:`allocations.Allocations`) from what the objects hold, then processes changed
objects in passes: decide in memory, then write. The decisions live in
``allocations.py`` (pure, tested without etcd); this module tracks what changed, asks
for decisions and writes them. A decision is a function of the allocations alone and
every request is idempotent per owner, so a write lost to a conflict or to a crash is
simply decided the same way again; every write is fenced by leadership, so an ex-leader
cannot write a stale decision. Until the cluster has a node, service or network there is
nothing to allocate, not even the ingress network.

Bad objects never stop the loop: an object whose fields cannot be read or whose request
cannot be met gets a ``Allocated=False`` condition saying why, and the pass goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Final

from shoal.controllers import common
from shoal.controllers.allocator import allocations as books
from shoal.controllers.allocator import ipam
from shoal.crds import admission, kinds
from shoal.crds import networking as nw
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.runtime import cas, gcpolicy, runnable
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors

log = rt_logging.get_logger("shoal.controllers.allocator")

NETWORKS: Final = common.kind("networks")
#: The key the loop's own log lines carry (the lease's name too).
LOOP_KEY: Final = "allocator"
#: Object writes in flight at once.
PARALLEL_WRITES: Final = 16
#: Seconds before objects whose write failed (not a conflict) are looked at again.
RETRY_AFTER: Final = 0.5

ServiceKey = books.ServiceKey
TaskKey = books.TaskKey


class _Term:
    """The allocator's state for one leadership term."""

    def __init__(self, store: client.Store, networks: informer_mod.Informer,
                 services: informer_mod.Informer, tasks: informer_mod.Informer,
                 nodes: informer_mod.Informer, config: ipam.PoolConfig) -> None:
        self.store = store
        self.networks = networks
        self.services = services
        self.tasks = tasks
        self.nodes = nodes
        self.config = config
        self.books = books.Allocations(config)
        self.wake = asyncio.Event()
        self.dirty_networks: set[str] = set()
        self.dirty_services: set[ServiceKey] = set()
        self.dirty_tasks: set[TaskKey] = set()
        self.gone_networks: set[str] = set()
        self.gone_services: set[ServiceKey] = set()
        self.gone_tasks: set[str] = set()  # task uids
        self.gone_nodes: set[str] = set()
        self.ingress_creating = False
        self._names_of: dict[tuple[ServiceKey, int], list[str]] = {}
        self._ingress_name: str | bool | None = False  # False: not looked up this pass
        self._detach: list[Callable[[], None]] = []
        self._sem = asyncio.Semaphore(PARALLEL_WRITES)

    @property
    def alloc(self) -> ipam.Allocator:
        """The IPAM state of this term (read by tests and benchmarks)."""
        return self.books.ipam

    # --- change tracking ---

    def attach(self) -> None:
        def poke(fn: Callable[[], None]) -> None:
            fn()
            self.wake.set()

        def net_add(o: Resource) -> None:
            poke(lambda: self.dirty_networks.add(o.name))

        def net_del(o: Resource) -> None:
            def mark() -> None:
                self.gone_networks.add(o.name)
                self.dirty_services.update(self._service_keys())
            poke(mark)

        def svc_add(o: Resource) -> None:
            poke(lambda: self.dirty_services.add((ts.namespace_of(o), o.name)))

        def svc_del(o: Resource) -> None:
            poke(lambda: self.gone_services.add((ts.namespace_of(o), o.name)))

        def task_add(o: Resource) -> None:
            poke(lambda: self.dirty_tasks.add((ts.namespace_of(o), o.name)))

        def task_del(o: Resource) -> None:
            poke(lambda: self.gone_tasks.add(o.metadata.uid))

        def node_add(o: Resource) -> None:
            poke(lambda: setattr(self.books, "mesh_dirty", True))

        def node_del(o: Resource) -> None:
            poke(lambda: self.gone_nodes.add(o.name))

        self._detach = [
            self.networks.add_handlers(net_add, lambda _o, n: net_add(n), net_del),
            self.services.add_handlers(svc_add, lambda _o, n: svc_add(n), svc_del),
            self.tasks.add_handlers(task_add, lambda _o, n: task_add(n), task_del),
            self.nodes.add_handlers(node_add, None, node_del),
        ]

    def detach(self) -> None:
        for remove in self._detach:
            remove()
        self._detach = []

    def _service_keys(self) -> list[ServiceKey]:
        return [(ns or "default", name) for ns, name in self.services.keys()]

    def _ingress_names(self) -> list[str]:
        return [n.name for n in self.networks.list() if nw.is_ingress(n)]

    def _settle(self) -> None:
        """Log what the decisions noted; queue what they want looked at again."""
        for note in self.books.take_notes():
            getattr(log, note.level)(note.event, key=note.key, **note.fields)
        self.dirty_tasks.update(self.books.again_tasks)
        self.books.again_tasks.clear()
        self.dirty_services.update(self.books.again_services)
        self.books.again_services.clear()

    # --- the loop ---

    async def run(self) -> None:
        self.attach()
        skipped = self.books.rebuild(self.networks.list(), self.services.list(),
                                     self.tasks.list())
        self._settle()
        log.info("allocations rebuilt", key=LOOP_KEY, networks=len(self.alloc.networks()),
                 addresses=self.alloc.address_count(), ports=len(self.alloc.ports()),
                 skipped_networks=skipped)
        self.dirty_networks.update(n.name for n in self.networks.list())
        self.dirty_services.update(self._service_keys())
        self.dirty_tasks.update((ns or "default", name) for ns, name in self.tasks.keys())
        self.wake.set()
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(0)  # let a burst of events land in one pass
            await self.pass_once()

    async def pass_once(self) -> None:
        writes: list[Callable[[], Any]] = []
        # Per pass: a burst of 10,000 task events of one service reads its networks once.
        self._names_of = {}
        self._ingress_name = False
        self._apply_deletions()
        self._settle()
        await self._ensure_ingress()
        for name in self._drain(self.dirty_networks):
            with self._guard(f"network/{name}"):
                self._network(name)
        self._settle()
        for skey in self._drain(self.dirty_services):
            with self._guard(f"service/{skey[0]}/{skey[1]}"):
                writes.extend(self._service(skey))
        self._settle()
        for tkey in self._drain(self.dirty_tasks):
            with self._guard(f"task/{tkey[0]}/{tkey[1]}"):
                writes.extend(self._task(tkey))
        self.books.mesh_nodes(self.ingress(), lambda: [n.name for n in self.nodes.list()])
        for net in self.networks.list():
            with self._guard(net.ref):
                mutation = self.books.network_status(net)
                if mutation is not None:
                    writes.append(self._writer(NETWORKS, net, mutation))
        # Tasks looked at again go to the next pass, as they always did.
        self._settle()
        if writes:
            results = await asyncio.gather(*(w() for w in writes), return_exceptions=True)
            for result in results:
                if isinstance(result, errors.FencedError):
                    raise result
                if isinstance(result, BaseException) and not isinstance(
                        result, errors.StoreError):
                    log.error("allocation write failed", key=LOOP_KEY,
                              error=repr(result))
        if self.dirty_networks or self.dirty_services or self.dirty_tasks:
            self.wake.set()  # decisions of this pass made more work (releases)

    @staticmethod
    def _drain(items: set[Any]) -> list[Any]:
        out = sorted(items)
        items.clear()
        return out

    @staticmethod
    @contextlib.contextmanager
    def _guard(ref: str) -> Iterator[None]:
        try:
            yield
        except errors.FencedError:
            raise
        except Exception:
            # One object we cannot handle must not stop allocation for the others.
            log.exception("cannot allocate for object", key=ref)

    # --- deletions ---

    def _apply_deletions(self) -> None:
        for name in self._drain(self.gone_networks):
            if self.networks.get(name) is None:
                self.books.release_network(name)
        for key in self._drain(self.gone_services):
            self.books.forget_service(key)
            if self.services.get(key[1], key[0]) is None:
                self.books.release_service(key)
        for uid in self._drain(self.gone_tasks):
            self.books.release_task(uid)
        for node in self._drain(self.gone_nodes):
            if self.nodes.get(node) is None:
                self.books.release_node(node)

    # --- networks ---

    async def _ensure_ingress(self) -> None:
        if self.ingress_creating or self._ingress_names():
            return
        self.ingress_creating = True
        try:
            doc = {"apiVersion": NETWORKS.api_version, "kind": "Network",
                   "metadata": {"name": nw.INGRESS_NETWORK},
                   "spec": {"driver": "overlay", "ingress": True}}
            obj = admission.admit(doc, kinds.Registry.builtin())
            await self.store.create(NETWORKS, obj)
            log.info("created the ingress network", key=f"network/{nw.INGRESS_NETWORK}")
        except errors.AlreadyExistsError:
            existing = self.networks.get(nw.INGRESS_NETWORK)
            if existing is not None and not nw.is_ingress(existing):
                log.error("a network named ingress exists but is not the ingress network; "
                          "the routing mesh has no network", key=existing.ref)
        except errors.FencedError:
            raise
        except errors.StoreError as exc:
            log.warning("creating the ingress network failed; retrying", key=LOOP_KEY,
                        error=str(exc))
            asyncio.get_running_loop().call_later(RETRY_AFTER, self.wake.set)
        finally:
            self.ingress_creating = False

    def ingress(self) -> str | None:
        """The routing-mesh network (``networking.ingress_name``), looked up once a pass."""
        if self._ingress_name is not False:
            return self._ingress_name if isinstance(self._ingress_name, str) else None
        self._ingress_name = nw.ingress_name(self.networks.list())
        return self._ingress_name

    def _task_networks(self, svc: Resource) -> list[str]:
        """The networks a task of ``svc`` attaches to (cached for the pass, by service
        and generation)."""
        key = ((ts.namespace_of(svc), svc.name), svc.metadata.generation)
        names = self._names_of.get(key)
        if names is None:
            # No ingress network yet (being created): its default name, so a task of a
            # publishing service waits for it rather than being allocated without it.
            ingress = self.ingress() or nw.INGRESS_NETWORK
            names = self._names_of[key] = nw.task_network_names(svc, ingress)
        return names

    def _network(self, name: str) -> None:
        net = self.networks.get(name)
        if net is None or net.metadata.deletionTimestamp:
            return
        if self.books.network(net):
            self.dirty_services.update(self._service_keys())

    # --- services and tasks ---

    def _service(self, key: ServiceKey) -> list[Callable[[], Any]]:
        svc = self.services.get(key[1], key[0])
        if svc is None:
            return []
        mutation = self.books.service(svc, self.ingress(),
                                      lambda n: self.networks.get(n) is not None)
        return [] if mutation is None else [self._writer(common.SERVICES, svc, mutation)]

    def _task(self, key: TaskKey) -> list[Callable[[], Any]]:
        task = self.tasks.get(key[1], key[0])
        mutation = self.books.task(key, task, lambda ns, n: self.services.get(n, ns),
                                   self._task_networks,
                                   lambda n: self.networks.get(n) is not None)
        if mutation is None or task is None:
            return []
        return [self._writer(common.TASKS, task, mutation)]

    # --- writing ---

    def _writer(self, info: kinds.KindInfo, obj: Resource,
                mutation: books.Mutation) -> Callable[[], Any]:
        return lambda: self._write(info, obj, mutation)

    async def _write(self, info: kinds.KindInfo, obj: Resource,
                     mutation: Callable[[Resource], None]) -> None:
        async with self._sem:
            try:
                await cas.mutate(self.store, info, obj, mutation)
            except errors.FencedError:
                raise
            except errors.StoreError as exc:
                # The informer brings the object back when it changes; a failure that is
                # not a conflict (etcd away) is retried by looking at it again soon.
                log.warning("allocation write failed; retrying", key=obj.ref, error=str(exc))
                self._retry(info, obj)

    def _retry(self, info: kinds.KindInfo, obj: Resource) -> None:
        def again() -> None:
            if info is NETWORKS:
                self.dirty_networks.add(obj.name)
            elif info is common.SERVICES:
                self.dirty_services.add((ts.namespace_of(obj), obj.name))
            else:
                self.dirty_tasks.add((ts.namespace_of(obj), obj.name))
            self.wake.set()
        asyncio.get_running_loop().call_later(RETRY_AFTER, again)


class AllocatorController:
    """One per controller-manager process: ``spec`` is the RunnableSpec to run."""

    def __init__(self, config: ipam.PoolConfig | None = None) -> None:
        self.config = config or ipam.PoolConfig()
        self.term: _Term | None = None
        self.spec = runnable.RunnableSpec(name="allocator", run=self._run)

    async def _run(self, ctx: runnable.RunContext) -> None:
        networks, services, tasks, nodes = (ctx.informers.informer(info) for info in
                                            (NETWORKS, common.SERVICES, common.TASKS,
                                             common.NODES))
        for inf in (networks, services, tasks, nodes):
            await inf.wait_synced()
        await _first_object(networks, services, nodes)
        gcpolicy.install()
        term = _Term(ctx.store, networks, services, tasks, nodes, self.config)
        self.term = term
        try:
            await term.run()
        finally:
            if self.term is term:
                self.term = None
            with contextlib.suppress(Exception):
                term.detach()


async def _first_object(*informers: informer_mod.Informer) -> None:
    """Return once any of ``informers`` holds an object: an empty cluster (no node,
    service or network) gets no ingress network until it has one, as before."""
    if any(len(inf) for inf in informers):
        return
    seen = asyncio.Event()

    def any_added(_obj: Resource) -> None:
        seen.set()
    removers = [inf.add_handlers(any_added, None, None) for inf in informers]
    try:
        await seen.wait()  # a handler added after sync is replayed the cached objects
    finally:
        for remove in removers:
            remove()


def controller_spec() -> runnable.RunnableSpec:
    """A fresh allocator (one per controller-manager process)."""
    return AllocatorController().spec
