"""The allocator's decisions: which network gets which subnet, VNI and VIP block, which
task, node and service gets which address or port, what collides, what is released.

Everything here is a function of the objects handed in and of the books kept in
:class:`Allocations` (the IPAM's state, plus who is waiting for what): no etcd, no
informers, no I/O — not even logging. A decision about an object is returned as a
:data:`Mutation` that makes the object say it (``None`` when it already does), so the
loop in ``controller.py`` only chooses *what* to look at and writes what it is told;
the rules are tested in ``tests/unit/test_allocator_allocations.py`` without etcd.
Things worth a log line are queued as :class:`Note` for the loop to log, and objects to
look at again because something was freed or allocated are queued in ``again_*``.

``ipam.py`` stays the arithmetic (free subnets, lowest free address, port ranges); this
module says how the objects map onto it:

* rebuilding: every allocation the objects hold is adopted, oldest object first, so a
  collision written by two racing writers goes to the first holder; the loser is
  allocated afresh;
* a task is allocated all or nothing, one address per network of its service (plus the
  ingress network when the service publishes ports), only while it is to run and not
  yet ended; its node gets an address on each of those networks;
* a service gets a VIP per network (none on ingress, none in ``dnsrr`` mode) and its
  ingress ports; whatever it no longer needs is released;
* while some service publishes an ingress port, every node gets an ingress address (the
  routing mesh answers on every node);
* an object whose request cannot be met is told why in its ``Allocated`` condition and
  waits: it is looked at again when something is freed or a network is allocated.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from shoal.controllers.allocator import ipam
from shoal.crds import conditions
from shoal.crds import networking as nw
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource

ServiceKey = tuple[str, str]
TaskKey = tuple[str, str]
#: Makes an object say what was decided (applied by the loop with compare-and-swap).
Mutation = Callable[[Resource], None]

NETWORK_STATUS_FIELDS: Final = ("subnet", "gateway", "vni", "vipRange", "nodeAddresses")


@dataclasses.dataclass(frozen=True)
class Note:
    """A line for the log (this module does no I/O): level, event, the object's key."""

    level: str  # "info", "warning" or "error"
    event: str
    key: str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def service_owner(key: ServiceKey) -> str:
    """The owner name a service's VIPs and ports are held under: ``namespace/name``."""
    return f"{key[0]}/{key[1]}"


def age(obj: Resource) -> tuple[float, int]:
    """Sort key: oldest first (creation time, then the revision that last wrote it)."""
    try:
        rv = int(obj.metadata.resourceVersion or 0)
    except ValueError:
        rv = 0
    return (ts.creation_time(obj), rv)


def _network_allocation(info: nw.NetworkInfo) -> ipam.NetworkAllocation:
    return ipam.NetworkAllocation(info.name, info.subnet, info.gateway, info.vni,
                                  info.ingress, info.vip_range)


def _unchanged(obj: Resource, mutation: Mutation) -> bool:
    """Would ``mutation`` leave the object's status as it is? (Then nothing is written.)"""
    probe = obj.deepcopy()
    mutation(probe)
    return probe.status == obj.status


class Allocations:
    """The books of one leadership term: the IPAM state and who waits for what."""

    def __init__(self, config: ipam.PoolConfig) -> None:
        self.ipam = ipam.Allocator(config)
        # Tasks and services that could not be fully allocated (a network not there yet,
        # a subnet or port taken): looked at again whenever something is allocated or
        # released.
        self.waiting: set[TaskKey] = set()
        self.blocked: set[ServiceKey] = set()
        self.network_problems: dict[str, str] = {}
        self.mesh_dirty = True  # node addresses on ingress may be missing
        self.notes: list[Note] = []
        self.again_tasks: set[TaskKey] = set()
        self.again_services: set[ServiceKey] = set()

    def _note(self, level: str, event: str, key: str, **fields: Any) -> None:
        self.notes.append(Note(level, event, key, fields))

    def take_notes(self) -> list[Note]:
        notes, self.notes = self.notes, []
        return notes

    def allocated(self, network: str) -> bool:
        try:
            self.ipam.network(network)
            return True
        except ipam.UnknownNetworkError:
            return False

    # --- rebuilding from the objects ---

    def rebuild(self, networks: Iterable[Resource], services: Iterable[Resource],
                tasks: Iterable[Resource]) -> int:
        """Adopt every allocation the objects hold, oldest object first; returns how many
        networks collided (they are allocated afresh)."""
        skipped = 0
        for net in sorted(networks, key=age):
            info = nw.network_info(net)
            if info is None or net.metadata.deletionTimestamp:
                continue
            try:
                self.ipam.adopt_network(_network_allocation(info))
            except ipam.IpamError as exc:
                skipped += 1
                self._note("error", "network allocation collides; it will be allocated "
                           "afresh", net.ref, error=str(exc))
                continue
            for node, address in info.node_addresses.items():
                self._adopt(ipam.AddressAllocation(net.name, "node", node, address), net)
        for svc in sorted(services, key=age):
            owner = service_owner((ts.namespace_of(svc), svc.name))
            ep = nw.endpoint(svc)
            for network, vip in ep.vips.items():
                if self.ipam.address_of(network, "vip", owner) is None:
                    self._adopt(ipam.AddressAllocation(network, "vip", owner, vip), svc)
            for port in ep.ports:
                if port.mode == "ingress" and port.published is not None:
                    try:
                        self.ipam.adopt_port(ipam.PortAllocation(
                            owner, port.protocol, port.published, port.target))
                    except ipam.IpamError as exc:
                        self._note("error", "published port collides; the newer service "
                                   "loses it", svc.ref, error=str(exc))
        for task in sorted(tasks, key=age):
            if ts.has_ended(task):
                continue
            for att in nw.task_attachments(task) or ():
                self._adopt(ipam.AddressAllocation(att.network, "task", task.metadata.uid,
                                                   att.address.ip), task)
        return skipped

    def _adopt(self, a: ipam.AddressAllocation, obj: Resource) -> None:
        try:
            self.ipam.adopt_address(a)
        except ipam.UnknownNetworkError:
            pass  # its network is gone or unallocated: nothing to reserve
        except ipam.IpamError as exc:
            self._note("error", "address allocation collides with an older one", obj.ref,
                       network=a.network, address=str(a.address), error=str(exc))

    # --- releases (the loop calls these once the object is gone) ---

    def _released(self) -> None:
        """Something was freed: whoever could not be served may be now."""
        self.again_tasks.update(self.waiting)
        self.waiting.clear()
        self.again_services.update(self.blocked)
        self.blocked.clear()

    def release_network(self, name: str) -> None:
        self.ipam.release_network(name)
        self.network_problems.pop(name, None)
        self._note("info", "network released", f"network/{name}")

    def forget_service(self, key: ServiceKey) -> None:
        """The service was deleted (or recreated): it blocks nobody any more."""
        self.blocked.discard(key)

    def release_service(self, key: ServiceKey) -> None:
        owner = service_owner(key)
        for net in self.ipam.networks():
            self.ipam.release_vip(net.name, owner)
        self.ipam.release_ports(owner)
        self._released()

    def release_task(self, uid: str) -> None:
        released = False
        for net in self.ipam.networks():
            if self.ipam.address_of(net.name, "task", uid) is not None:
                self.ipam.release_task_address(net.name, uid)
                released = True
        if released:
            self._released()

    def release_node(self, node: str) -> None:
        for net in self.ipam.networks():
            if self.ipam.address_of(net.name, "node", node) is not None:
                self.ipam.release_node_address(net.name, node)

    # --- networks ---

    def network(self, net: Resource) -> bool:
        """Allocate a live network; True when it was not allocated before (whoever waited
        for it can be served now: the loop looks at every service again)."""
        name = net.name
        had = self.allocated(name)
        spec = net.spec
        subnet, gateway = spec.get("subnet"), spec.get("gateway")
        try:
            self.ipam.allocate_network(
                name, subnet=subnet if isinstance(subnet, str) and subnet else None,
                gateway=gateway if isinstance(gateway, str) and gateway else None,
                ingress=nw.is_ingress(net))
            self.network_problems.pop(name, None)
        except (ipam.IpamError, ValueError) as exc:
            self.network_problems[name] = str(exc)
            self._note("warning", "network cannot be allocated", net.ref, error=str(exc))
            return False
        if had:
            return False
        self.mesh_dirty = True
        self._note("info", "network allocated", net.ref,
                   subnet=str(self.ipam.network(name).subnet),
                   vni=self.ipam.network(name).vni)
        self._released()
        return True

    def node_address(self, network: str, node: str) -> None:
        try:
            self.ipam.allocate_node_address(network, node)
        except ipam.UnknownNetworkError:
            pass
        except ipam.IpamError as exc:
            self.network_problems[network] = str(exc)
            self._note("error", "no address left for a node", f"network/{network}",
                       node=node, error=str(exc))

    def mesh_nodes(self, ingress: str | None, nodes: Callable[[], Iterable[str]]) -> None:
        """Every node gets an ingress address while some service publishes an ingress
        port: the routing mesh answers on every node and masquerades to that address."""
        if not self.mesh_dirty:
            return
        self.mesh_dirty = False
        if ingress is None or not self.allocated(ingress) or not self.ipam.ports():
            return
        for node in nodes():
            self.node_address(ingress, node)

    def network_status(self, net: Resource) -> Mutation | None:
        """What makes the network's status say what was decided (None: it already does)."""
        if net.metadata.deletionTimestamp:
            return None
        name = net.name
        problem = self.network_problems.get(name)
        fields: dict[str, Any] = {}
        if self.allocated(name):
            a = self.ipam.network(name)
            fields = {"subnet": str(a.subnet), "gateway": str(a.gateway), "vni": a.vni}
            if a.vip_range is not None:
                fields["vipRange"] = str(a.vip_range)
            fields["nodeAddresses"] = {n: str(addr) for n, addr in sorted(
                self.ipam.holders(name, "node").items())}
        generation = net.metadata.generation

        def mutate(obj: Resource) -> None:
            for field in NETWORK_STATUS_FIELDS:
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

        return None if _unchanged(net, mutate) else mutate

    # --- services ---

    def service(self, svc: Resource, ingress: str | None,
                network_exists: Callable[[str], bool]) -> Mutation | None:
        """VIPs and ingress ports for a service; what makes its ``status.endpoint`` and
        ``Allocated`` condition say so (None: they already do)."""
        key = (ts.namespace_of(svc), svc.name)
        owner = service_owner(key)
        problems: list[str] = []
        mode = nw.endpoint_mode(svc)
        vips: dict[str, ipaddress.IPv4Address] = {}
        for name in nw.service_networks(svc):
            if name == ingress:
                continue  # the mesh balances published ports; ingress has no VIPs
            if not self.allocated(name):
                why = self.network_problems.get(name)
                problems.append(f"network {name} is not allocated: {why}" if why else
                                f"network {name} not found" if not network_exists(name)
                                else f"network {name} is not allocated yet")
                continue
            if mode == "vip":
                try:
                    vips[name] = self.ipam.allocate_vip(name, owner)
                except ipam.IpamError as exc:
                    problems.append(str(exc))
        for net in self.ipam.networks():
            if net.name not in vips:
                self.ipam.release_vip(net.name, owner)
        ports: list[nw.PublishedPort] = []
        requested = nw.spec_ports(svc)
        ingress_requests = [ipam.PortRequest(p.target, p.protocol, p.published)
                            for p in requested if p.mode == "ingress"]
        picked: list[ipam.PortAllocation] = []
        if ingress_requests:
            try:
                picked = self.ipam.allocate_ports(owner, ingress_requests)
            except ipam.IpamError as exc:
                self.ipam.release_ports(owner)
                problems.append(str(exc))
        else:
            self.ipam.release_ports(owner)
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

        if _unchanged(svc, mutate):
            return None
        if message:
            self._note("warning", "service endpoint incomplete", svc.ref, problems=message)
        return mutate

    # --- tasks ---

    def task(self, key: TaskKey, task: Resource | None,
             service: Callable[[str, str], Resource | None],
             networks_of: Callable[[Resource], list[str]],
             network_exists: Callable[[str], bool] | None = None) -> Mutation | None:
        """Addresses for a task (all or nothing) and for its node; what makes the task's
        ``spec.networks`` (or its ``Allocated`` condition, on failure) say so.

        ``service(namespace, name)`` looks a service up; ``networks_of(service)`` names
        the networks its tasks attach to; ``network_exists(name)`` says whether a Network
        is stored. They are only called when needed: most task changes (progress
        reports) are decided without them.
        """
        self.waiting.discard(key)
        if task is None:
            return None
        uid = task.metadata.uid
        if ts.has_ended(task):
            self.release_task(uid)
            return None
        attachments = nw.task_attachments(task)
        node = ts.node_name_of(task)
        if attachments is not None:
            # Allocated already; its node needs an address on each of its networks.
            if node is not None and ts.is_active_desired(task):
                for att in attachments:
                    if self.ipam.address_of(att.network, "node", node) is None:
                        self.node_address(att.network, node)
            return None
        if not ts.is_active_desired(task):
            return None  # on its way out: allocating now would only be released again
        service_name = ts.service_name(task)
        svc = service(key[0], service_name) if service_name else None
        if svc is None:
            return None
        names = networks_of(svc)
        if not names:
            return None
        if not all(self.allocated(n) for n in names):
            self.waiting.add(key)
            # A network that is missing or cannot be allocated is said on the task, so
            # `swctl service ps` shows why it waits; one merely not allocated yet (made
            # in the same apply) is not worth a write.
            why = self._unavailable(names, network_exists)
            return None if why is None else self._refuse(task, why)
        got: list[nw.Attachment] = []
        try:
            for name in names:
                address = self.ipam.allocate_task_address(name, uid)
                prefix = self.ipam.network(name).subnet.prefixlen
                got.append(nw.Attachment(name, ipaddress.IPv4Interface((address, prefix))))
        except ipam.IpamError as exc:
            for att in got:  # all or nothing; not a release that frees room for others
                self.ipam.release_task_address(att.network, uid)
            self.waiting.add(key)
            return self._refuse(task, str(exc))
        if node is not None:
            for name in names:
                self.node_address(name, node)
        field = nw.attachments_field(got)

        def mutate(obj: Resource) -> None:
            if nw.task_attachments(obj) is None:
                obj.spec["networks"] = field
                if conditions.get_condition(obj, nw.ALLOCATED) is not None:
                    conditions.set_condition(obj, nw.ALLOCATED, True, "Allocated", "")
        return mutate

    def _unavailable(self, names: Iterable[str],
                     network_exists: Callable[[str], bool] | None) -> str | None:
        """Why the first of ``names`` that cannot be allocated cannot be (None while
        each one is merely not allocated yet)."""
        for name in names:
            if self.allocated(name):
                continue
            why = self.network_problems.get(name)
            if why:
                return f"network {name} is not allocated: {why}"
            if network_exists is not None and not network_exists(name):
                return f"network {name} not found"
        return None

    def _refuse(self, task: Resource, message: str) -> Mutation | None:
        """What makes the task's ``Allocated`` condition say ``message`` (None if it
        already does)."""
        if (conditions.get_condition(task, nw.ALLOCATED) or {}).get("message") == message:
            return None
        self._note("warning", "task cannot be given an address", task.ref, error=message)

        def fail(obj: Resource) -> None:
            conditions.set_condition(obj, nw.ALLOCATED, False, "AllocationFailed", message)
        return fail
