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
allocator, it runs as a single leader-scoped loop (``LeaderLoop``): at the start of a
term it rebuilds :class:`ipam.Allocator` from what the objects hold (oldest object first,
so a collision written by two racing writers is resolved in favour of the first holder),
then processes changed objects in passes: decide in memory, then write. A decision is
a function of the allocations alone and every request is idempotent per owner, so a
write lost to a conflict or to a crash is simply decided the same way again; every write
is fenced by leadership, so an ex-leader cannot write a stale decision.

Bad objects never stop the loop: an object whose fields cannot be read or whose request
cannot be met gets a ``Allocated=False`` condition saying why, and the pass goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from shoal.controllers import common
from shoal.controllers.allocator import ipam
from shoal.controllers.leaderloop import LeaderLoop
from shoal.crds import admission, conditions, kinds
from shoal.crds import networking as nw
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.runtime import cas, reconcile
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors

log = rt_logging.get_logger("shoal.controllers.allocator")

NETWORKS: Final = common.kind("networks")
#: The key every watched change maps to: it only has to wake the loop once.
LOOP_KEY: Final = "allocator"
#: Object writes in flight at once.
PARALLEL_WRITES: Final = 16
#: Seconds before objects whose write failed (not a conflict) are looked at again.
RETRY_AFTER: Final = 0.5

ServiceKey = tuple[str, str]
TaskKey = tuple[str, str]


def _service_owner(key: ServiceKey) -> str:
    return f"{key[0]}/{key[1]}"


def _age(obj: Resource) -> tuple[float, int]:
    """Sort key: oldest first (creation time, then the revision that last wrote it)."""
    try:
        rv = int(obj.metadata.resourceVersion or 0)
    except ValueError:
        rv = 0
    return (ts.creation_time(obj), rv)


def _network_allocation(info: nw.NetworkInfo) -> ipam.NetworkAllocation:
    return ipam.NetworkAllocation(info.name, info.subnet, info.gateway, info.vni,
                                  info.ingress, info.vip_range)


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
        self.alloc = ipam.Allocator(config)
        self.wake = asyncio.Event()
        self.dirty_networks: set[str] = set()
        self.dirty_services: set[ServiceKey] = set()
        self.dirty_tasks: set[TaskKey] = set()
        self.gone_networks: set[str] = set()
        self.gone_services: set[ServiceKey] = set()
        self.gone_tasks: set[str] = set()  # task uids
        self.gone_nodes: set[str] = set()
        # Tasks and services that could not be fully allocated (a network not there yet,
        # a subnet or port taken): looked at again whenever something is allocated or
        # released.
        self.waiting: set[TaskKey] = set()
        self.blocked: set[ServiceKey] = set()
        self.network_problems: dict[str, str] = {}
        self.ingress_creating = False
        self.mesh_dirty = True  # node addresses on ingress may be missing
        self._names_of: dict[tuple[ServiceKey, int], list[str]] = {}
        self._ingress_name: str | bool | None = False  # False: not looked up this pass
        self._detach: list[Callable[[], None]] = []
        self._sem = asyncio.Semaphore(PARALLEL_WRITES)

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
            poke(lambda: setattr(self, "mesh_dirty", True))

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

    # --- rebuilding from the objects ---

    def rebuild(self) -> None:
        """Adopt every allocation the objects hold, oldest object first."""
        skipped = 0
        for net in sorted(self.networks.list(), key=_age):
            info = nw.network_info(net)
            if info is None or net.metadata.deletionTimestamp:
                continue
            try:
                self.alloc.adopt_network(_network_allocation(info))
            except ipam.IpamError as exc:
                skipped += 1
                log.error("network allocation collides; it will be allocated afresh",
                          key=net.ref, error=str(exc))
                continue
            for node, address in info.node_addresses.items():
                self._adopt(ipam.AddressAllocation(net.name, "node", node, address), net)
        for svc in sorted(self.services.list(), key=_age):
            owner = _service_owner((ts.namespace_of(svc), svc.name))
            ep = nw.endpoint(svc)
            for network, vip in ep.vips.items():
                if self.alloc.address_of(network, "vip", owner) is None:
                    self._adopt(ipam.AddressAllocation(network, "vip", owner, vip), svc)
            for port in ep.ports:
                if port.mode == "ingress" and port.published is not None:
                    try:
                        self.alloc.adopt_port(ipam.PortAllocation(
                            owner, port.protocol, port.published, port.target))
                    except ipam.IpamError as exc:
                        log.error("published port collides; the newer service loses it",
                                  key=svc.ref, error=str(exc))
        for task in sorted(self.tasks.list(), key=_age):
            if ts.has_ended(task):
                continue
            for att in nw.task_attachments(task) or ():
                self._adopt(ipam.AddressAllocation(att.network, "task", task.metadata.uid,
                                                   att.address.ip), task)
        log.info("allocations rebuilt", key=LOOP_KEY, networks=len(self.alloc.networks()),
                 addresses=self.alloc.address_count(), ports=len(self.alloc.ports()),
                 skipped_networks=skipped)

    def _adopt(self, a: ipam.AddressAllocation, obj: Resource) -> None:
        try:
            self.alloc.adopt_address(a)
        except ipam.UnknownNetworkError:
            pass  # its network is gone or unallocated: nothing to reserve
        except ipam.IpamError as exc:
            log.error("address allocation collides with an older one", key=obj.ref,
                      network=a.network, address=str(a.address), error=str(exc))

    # --- the loop ---

    async def run(self) -> None:
        self.attach()
        self.rebuild()
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
        await self._ensure_ingress()
        for name in self._drain(self.dirty_networks):
            with self._guard(f"network/{name}"):
                self._network(name)
        for skey in self._drain(self.dirty_services):
            with self._guard(f"service/{skey[0]}/{skey[1]}"):
                writes.extend(self._service(skey))
        for tkey in self._drain(self.dirty_tasks):
            with self._guard(f"task/{tkey[0]}/{tkey[1]}"):
                writes.extend(self._task(tkey))
        self._mesh_nodes()
        for net in self.networks.list():
            with self._guard(net.ref):
                writes.extend(self._network_write(net))
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
                self.alloc.release_network(name)
                self.network_problems.pop(name, None)
                log.info("network released", key=f"network/{name}")
        for key in self._drain(self.gone_services):
            self.blocked.discard(key)
            if self.services.get(key[1], key[0]) is None:
                owner = _service_owner(key)
                for net in self.alloc.networks():
                    self.alloc.release_vip(net.name, owner)
                self.alloc.release_ports(owner)
                self._released()
        for uid in self._drain(self.gone_tasks):
            self._release_task(uid)
        for node in self._drain(self.gone_nodes):
            if self.nodes.get(node) is None:
                for net in self.alloc.networks():
                    if self.alloc.address_of(net.name, "node", node) is not None:
                        self.alloc.release_node_address(net.name, node)

    def _release_task(self, uid: str) -> None:
        released = False
        for net in self.alloc.networks():
            if self.alloc.address_of(net.name, "task", uid) is not None:
                self.alloc.release_task_address(net.name, uid)
                released = True
        if released:
            self._released()

    def _released(self) -> None:
        """Something was freed: whoever could not be served may be now."""
        self.dirty_tasks.update(self.waiting)
        self.waiting.clear()
        self.dirty_services.update(self.blocked)
        self.blocked.clear()

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
        had = self._allocated(name)
        spec = net.spec
        subnet, gateway = spec.get("subnet"), spec.get("gateway")
        try:
            self.alloc.allocate_network(
                name, subnet=subnet if isinstance(subnet, str) and subnet else None,
                gateway=gateway if isinstance(gateway, str) and gateway else None,
                ingress=nw.is_ingress(net))
            self.network_problems.pop(name, None)
        except (ipam.IpamError, ValueError) as exc:
            self.network_problems[name] = str(exc)
            log.warning("network cannot be allocated", key=net.ref, error=str(exc))
            return
        if not had:
            self.mesh_dirty = True
            log.info("network allocated", key=net.ref,
                     subnet=str(self.alloc.network(name).subnet),
                     vni=self.alloc.network(name).vni)
            # Whoever waited for this network can be served now.
            self.dirty_services.update(self._service_keys())
            self._released()

    def _allocated(self, name: str) -> bool:
        try:
            self.alloc.network(name)
            return True
        except ipam.UnknownNetworkError:
            return False

    def _mesh_nodes(self) -> None:
        """Every node gets an ingress address while some service publishes an ingress
        port: the routing mesh answers on every node and masquerades to that address."""
        if not self.mesh_dirty:
            return
        self.mesh_dirty = False
        ingress = self.ingress()
        if ingress is None or not self._allocated(ingress) or not self.alloc.ports():
            return
        for node in self.nodes.list():
            self._node_address(ingress, node.name)

    def _node_address(self, network: str, node: str) -> None:
        try:
            self.alloc.allocate_node_address(network, node)
        except ipam.UnknownNetworkError:
            pass
        except ipam.IpamError as exc:
            self.network_problems[network] = str(exc)
            log.error("no address left for a node", key=f"network/{network}", node=node,
                      error=str(exc))

    def _network_write(self, net: Resource) -> list[Callable[[], Any]]:
        """The write that makes the network's status say what the allocator decided."""
        if net.metadata.deletionTimestamp:
            return []
        name = net.name
        problem = self.network_problems.get(name)
        fields: dict[str, Any] = {}
        if self._allocated(name):
            a = self.alloc.network(name)
            fields = {"subnet": str(a.subnet), "gateway": str(a.gateway), "vni": a.vni}
            if a.vip_range is not None:
                fields["vipRange"] = str(a.vip_range)
            fields["nodeAddresses"] = {n: str(addr) for n, addr in sorted(
                self.alloc.holders(name, "node").items())}
        generation = net.metadata.generation

        def mutate(obj: Resource) -> None:
            for field in ("subnet", "gateway", "vni", "vipRange", "nodeAddresses"):
                if field in fields:
                    obj.status[field] = fields[field]
                elif problem is not None or not fields:
                    obj.status.pop(field, None)
            if problem is None and fields:
                conditions.set_condition(obj, nw.ALLOCATED, True, "Allocated",
                                         f"subnet {fields['subnet']}, VNI {fields['vni']}")
            else:
                conditions.set_condition(obj, nw.ALLOCATED, False, "AllocationFailed",
                                         problem or "not allocated yet")
            obj.status["observedGeneration"] = generation

        probe = net.deepcopy()
        mutate(probe)
        if probe.status == net.status:
            return []
        return [lambda: self._write(NETWORKS, net, mutate)]

    # --- services ---

    def _service(self, key: ServiceKey) -> list[Callable[[], Any]]:
        svc = self.services.get(key[1], key[0])
        if svc is None:
            return []
        owner = _service_owner(key)
        ingress = self.ingress()
        problems: list[str] = []
        mode = nw.endpoint_mode(svc)
        vips: dict[str, ipaddress.IPv4Address] = {}
        for name in nw.service_networks(svc):
            if name == ingress:
                continue  # the mesh balances published ports; ingress has no VIPs
            if not self._allocated(name):
                why = self.network_problems.get(name)
                problems.append(f"network {name} is not allocated: {why}" if why else
                                f"network {name} not found" if self.networks.get(name) is None
                                else f"network {name} is not allocated yet")
                continue
            if mode == "vip":
                try:
                    vips[name] = self.alloc.allocate_vip(name, owner)
                except ipam.IpamError as exc:
                    problems.append(str(exc))
        for net in self.alloc.networks():
            if net.name not in vips:
                self.alloc.release_vip(net.name, owner)
        ports: list[nw.PublishedPort] = []
        requested = nw.spec_ports(svc)
        ingress_requests = [ipam.PortRequest(p.target, p.protocol, p.published)
                            for p in requested if p.mode == "ingress"]
        picked: list[ipam.PortAllocation] = []
        if ingress_requests:
            try:
                picked = self.alloc.allocate_ports(owner, ingress_requests)
            except ipam.IpamError as exc:
                self.alloc.release_ports(owner)
                problems.append(str(exc))
        else:
            self.alloc.release_ports(owner)
        picks = iter(picked)
        for p in requested:
            if p.mode == "ingress":
                got = next(picks, None)
                if got is None:
                    continue  # not allocated (the condition says why)
                ports.append(nw.PublishedPort(p.protocol, p.target, got.published, p.mode,
                                              p.name))
            else:
                ports.append(p)
        endpoint = nw.endpoint_field(mode, vips, ports)
        message = "; ".join(problems)
        self.mesh_dirty = True
        if problems:
            self.blocked.add(key)
        else:
            self.blocked.discard(key)

        def mutate(obj: Resource) -> None:
            obj.status["endpoint"] = endpoint
            if message:
                conditions.set_condition(obj, nw.ALLOCATED, False, "AllocationFailed",
                                         message)
            else:
                conditions.set_condition(obj, nw.ALLOCATED, True, "Allocated",
                                         "endpoint allocated")

        probe = svc.deepcopy()
        mutate(probe)
        if probe.status == svc.status:
            return []
        if message:
            log.warning("service endpoint incomplete", key=svc.ref, problems=message)
        return [lambda: self._write(common.SERVICES, svc, mutate)]

    # --- tasks ---

    def _task(self, key: TaskKey) -> list[Callable[[], Any]]:
        task = self.tasks.get(key[1], key[0])
        self.waiting.discard(key)
        if task is None:
            return []
        uid = task.metadata.uid
        if ts.has_ended(task):
            self._release_task(uid)
            return []
        attachments = nw.task_attachments(task)
        node = ts.node_name_of(task)
        if attachments is not None:
            # Allocated already; its node needs an address on each of its networks.
            if node is not None and ts.is_active_desired(task):
                for att in attachments:
                    if self.alloc.address_of(att.network, "node", node) is None:
                        self._node_address(att.network, node)
            return []
        if not ts.is_active_desired(task):
            return []  # on its way out: allocating now would only be released again
        service_name = ts.service_name(task)
        svc = self.services.get(service_name, key[0]) if service_name else None
        if svc is None:
            return []
        names = self._task_networks(svc)
        if not names:
            return []
        if not all(self._allocated(n) for n in names):
            self.waiting.add(key)
            return []
        got: list[nw.Attachment] = []
        try:
            for name in names:
                address = self.alloc.allocate_task_address(name, uid)
                prefix = self.alloc.network(name).subnet.prefixlen
                got.append(nw.Attachment(name, ipaddress.IPv4Interface((address, prefix))))
        except ipam.IpamError as exc:
            for att in got:  # all or nothing; not a release that frees room for others
                self.alloc.release_task_address(att.network, uid)
            self.waiting.add(key)
            message = str(exc)
            if (conditions.get_condition(task, nw.ALLOCATED) or {}).get("message") == message:
                return []
            log.warning("task cannot be given an address", key=task.ref, error=message)

            def fail(obj: Resource) -> None:
                conditions.set_condition(obj, nw.ALLOCATED, False, "AllocationFailed",
                                         message)
            return [lambda: self._write(common.TASKS, task, fail)]
        if node is not None:
            for name in names:
                self._node_address(name, node)
        field = nw.attachments_field(got)

        def mutate(obj: Resource) -> None:
            if nw.task_attachments(obj) is None:
                obj.spec["networks"] = field
                if conditions.get_condition(obj, nw.ALLOCATED) is not None:
                    conditions.set_condition(obj, nw.ALLOCATED, True, "Allocated", "")
        return [lambda: self._write(common.TASKS, task, mutate)]

    # --- writing ---

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
    """One per controller-manager process: ``spec`` is the ControllerSpec to run."""

    def __init__(self, config: ipam.PoolConfig | None = None) -> None:
        self.config = config or ipam.PoolConfig()
        self.term: _Term | None = None
        self.loop = LeaderLoop("allocator", self._run)
        # Hosted by any Network, Node or Service change: a cluster with nodes but no
        # network yet still needs its ingress network created.
        self.spec = reconcile.ControllerSpec(
            name="allocator", kind="networks", reconcile=self.loop.reconcile, workers=2,
            watches=(("nodes", _to_loop), ("services", _to_loop)))

    async def _run(self, ctx: reconcile.Context) -> None:
        networks, services, tasks, nodes = (ctx.informers.informer(info) for info in
                                            (NETWORKS, common.SERVICES, common.TASKS,
                                             common.NODES))
        for inf in (networks, services, tasks, nodes):
            await inf.wait_synced()
        term = _Term(ctx.store, networks, services, tasks, nodes, self.config)
        self.term = term
        try:
            await term.run()
        finally:
            if self.term is term:
                self.term = None
            with contextlib.suppress(Exception):
                term.detach()


def _to_loop(_obj: Resource) -> Iterable[str]:
    return (LOOP_KEY,)


def controller_spec() -> reconcile.ControllerSpec:
    """A fresh allocator (one per controller-manager process)."""
    return AllocatorController().spec
