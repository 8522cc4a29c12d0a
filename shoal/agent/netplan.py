"""What one node's dataplane should hold, computed from the cluster's objects: pure.

Given the Networks, Services, Tasks and Nodes the agent sees (with the allocations the
allocator wrote, ``shoal.crds.networking``), the pids of the local tasks' workloads and
the local tasks that are leaving, :func:`plan` returns everything the dataplane
programs: the overlay (``NetworkState``: bridges, VXLANs, remote endpoints, task veths),
the load balancer's ``VirtualService``s, the DNS records and where the DNS responder
listens. Tasks are read through :func:`task_entry` (a :class:`TaskEntry`: the five
fields a plan reads), which is also what the agent keeps of each task of the cluster:
:func:`plan_entries` plans from entries, :func:`plan` from task objects.
``shoal.agent.dataplane`` applies it. Keeping the decision pure keeps it
unit-testable without a kernel, and makes "an agent restart changes nothing" a
property of the inputs: the same objects give the same plan.

The rules, and why:

* A node hosts a network while one of its (not ended) tasks is attached to it, and the
  ingress network whenever some service publishes an ingress port (the routing mesh
  answers on every node). It needs its own address on the network (allocated by the
  allocator) to host it: that address is its tasks' gateway and DNS server.
* Remote endpoints are the addresses of every other node's not-ended tasks on the network,
  plus the other nodes' own addresses (masqueraded traffic comes from them), each behind
  its node's underlay address (``Node.status.address``).
* A local task is plumbed once its workload runs (its pid gives ``/proc/PID/ns/net``).
  Interfaces are ``eth0``, ``eth1``... in ``spec.networks`` order; the default route goes
  through the first network that is not internal (the ingress network comes last).
* A service's aliases on a network (``spec.networks[].aliases``) go into its DNS record
  for that network only (never the ingress network, which carries no service DNS).
* A local task on several networks is a DNS client of all of them (``Plan.clients``):
  it asks the listener of one, and is answered from each of its networks in turn.
* Balanced and resolved: tasks observed ``running`` and still desired running, minus the
  local tasks that are leaving (being stopped, or unhealthy) -- so a task leaves the
  balancer before it is killed. VIPs balance every port of both protocols (Swarm's VIPs
  do: a service need not declare its ports), as ``VirtualService`` port 0. Ingress ports
  go to every such task's ingress address; host-mode ports only to this node's tasks.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

from shoal.crds import networking as nw
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.net.dns import ServiceRecord
from shoal.net.lb import Backend, ServiceKey, VirtualService
from shoal.net.overlay import Attachment, NetworkState, OverlayNetwork, Peer

IPv4Address = ipaddress.IPv4Address

PROTOCOLS: tuple[Literal["tcp", "udp"], ...] = ("tcp", "udp")
#: ``VirtualService.port`` of a VIP that balances every port of its protocol.
ALL_PORTS = 0


@dataclasses.dataclass(frozen=True)
class Plan:
    overlay: NetworkState
    services: tuple[VirtualService, ...]
    dns: tuple[ServiceRecord, ...]
    listeners: Mapping[str, IPv4Address]  # network -> this node's address (DNS)
    problems: tuple[str, ...] = ()
    #: (network, a local task's address on it) -> the task's networks, for DNS: a task
    #: on several networks asks one listener and must see the services of all of them.
    clients: Mapping[tuple[str, IPv4Address], tuple[str, ...]] = dataclasses.field(
        default_factory=dict)


def serving(task: Resource) -> bool:
    """Observed running and still wanted: a balancer backend and a DNS answer."""
    return ts.is_running(task) and ts.is_active_desired(task)


class Att(NamedTuple):
    """A task's address on one network, compact: an ``ipaddress.IPv4Interface`` costs
    about 400 bytes, and a node keeps one per task of the cluster."""

    network: str
    packed: int  # the address as an integer
    prefixlen: int

    @property
    def ip(self) -> IPv4Address:
        return IPv4Address(self.packed)

    @property
    def address(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface((self.packed, self.prefixlen))


@dataclasses.dataclass(frozen=True, slots=True)
class TaskEntry:
    """What a plan reads of a task that is attached, placed and not ended: the agent
    keeps this of every task of the cluster, not the task (its informer and the index
    share one entry per task)."""

    uid: str
    service: tuple[str, str]  # (namespace, service name)
    node: str
    attachments: tuple[Att, ...]
    serving: bool


def task_entry(task: Resource) -> TaskEntry | None:
    """The task as a plan sees it; None for a task no plan counts: without allocated
    attachments, ended, or not placed."""
    atts = nw.task_attachments(task)
    node = task.spec.get("nodeName")
    if not atts or ts.has_ended(task) or not node:
        return None
    # Interned: 100,000 tasks name a few thousand services on a few hundred nodes.
    return TaskEntry(uid=task.metadata.uid,
                     service=(sys.intern(ts.namespace_of(task)),
                              sys.intern(ts.service_name(task) or "")),
                     node=sys.intern(str(node)),
                     attachments=tuple(Att(sys.intern(a.network), int(a.address.ip),
                                           a.address.network.prefixlen) for a in atts),
                     serving=serving(task))


def mesh_in_use(services: Iterable[Resource]) -> bool:
    """Some service has an allocated ingress port: every node answers it."""
    return any(p.mode == "ingress" and p.published is not None
               for s in services for p in nw.endpoint(s).ports)


def waiting_for(task: Resource, service: Resource | None, networks: Mapping[str, Resource],
                node: str) -> str | None:
    """Why a task of this node cannot be started yet (its networks are not allocated, or
    this node has no address on one of them yet), or None when it can."""
    attachments = nw.task_attachments(task)
    if attachments is None:
        if service is None:
            return None  # nothing says it needs a network (its service is gone)
        needed = nw.task_network_names(service, nw.ingress_name(networks.values()))
        if not needed:
            return None
        return f"waiting for network allocation ({', '.join(needed)})"
    for att in attachments:
        net = networks.get(att.network)
        info = nw.network_info(net) if net is not None else None
        if info is None:
            return f"waiting for network {att.network} to be allocated"
        if node not in info.node_addresses:
            return f"waiting for this node's address on network {att.network}"
    return None


def nameserver(task: Resource, networks: Mapping[str, Resource], node: str
               ) -> IPv4Address | None:
    """The DNS server a task's containers use: this node's address on the task's first
    network that carries service discovery (the ingress network carries none)."""
    for att in nw.task_attachments(task) or ():
        net = networks.get(att.network)
        info = nw.network_info(net) if net is not None else None
        if info is not None and not info.ingress and node in info.node_addresses:
            return info.node_addresses[node]
    return None


def plan(node: str, networks: Iterable[Resource], services: Iterable[Resource],
         tasks: Iterable[Resource], nodes: Iterable[Resource], pids: Mapping[str, int],
         leaving: frozenset[str] | set[str] = frozenset()) -> Plan:
    """The whole desired dataplane of ``node`` (see the module docstring)."""
    return plan_entries(node, networks, services,
                        [e for t in tasks if (e := task_entry(t)) is not None], nodes,
                        pids, leaving)


def plan_entries(node: str, networks: Iterable[Resource], services: Iterable[Resource],
                 tasks: Iterable[TaskEntry], nodes: Iterable[Resource],
                 pids: Mapping[str, int],
                 leaving: frozenset[str] | set[str] = frozenset()) -> Plan:
    """:func:`plan` from the tasks' entries (what the agent keeps of each task), walking
    the whole cluster: the reference the incremental index is compared with."""
    problems: list[str] = []
    nets = {n.name: n for n in networks}
    infos = {name: info for name, n in nets.items()
             if (info := nw.network_info(n)) is not None}
    svcs = list(services)
    underlay: dict[str, IPv4Address] = {}
    for n in nodes:
        try:
            underlay[n.name] = ipaddress.IPv4Address(str(n.status.get("address") or ""))
        except ValueError:
            continue
    ingress = nw.ingress_name(nets.values())

    # Who is attached where (tasks that have not ended: the only ones with an entry).
    attached = list(tasks)
    hosted: list[str] = []
    for t in attached:
        # Also while a task is being stopped: its veth goes when its workload does.
        if t.node == node:
            hosted.extend(a.network for a in t.attachments if a.network not in hosted)
    if ingress is not None and ingress not in hosted and mesh_in_use(svcs):
        hosted.append(ingress)

    overlay_nets: list[OverlayNetwork] = []
    listeners: dict[str, IPv4Address] = {}
    for name in hosted:
        info = infos.get(name)
        if info is None:
            problems.append(f"network {name} is not allocated")
            continue
        mine = info.node_addresses.get(node)
        if mine is None:
            problems.append(f"this node has no address on network {name} yet")
            continue
        peers: set[Peer] = set()
        local: list[Attachment] = []
        for t in attached:
            where = t.node
            for index, att in enumerate(t.attachments):
                if att.network != name:
                    continue
                if where != node:
                    if where in underlay:
                        peers.add(Peer(att.ip, underlay[where]))
                    continue
                pid = pids.get(t.uid)
                if pid is None:
                    continue  # not started yet: plumbed once its workload runs
                local.append(Attachment(
                    key=t.uid, netns=f"/proc/{pid}/ns/net", ifname=f"eth{index}",
                    address=att.address,
                    default_route=default_network(t.attachments, infos) == att.network))
        for other, address in info.node_addresses.items():
            if other != node and other in underlay:
                peers.add(Peer(address, underlay[other]))
        overlay_nets.append(OverlayNetwork(
            name=name, vni=info.vni, subnet=info.subnet, node_address=mine,
            vip_range=info.vip_range, internal=info.internal,
            attachments=tuple(sorted(local, key=lambda a: a.key)),
            peers=tuple(sorted(peers, key=lambda p: (int(p.address), int(p.underlay))))))
        if not info.ingress:
            listeners[name] = mine
    hosted_ok = {n.name for n in overlay_nets}

    # Who serves: running tasks, by service, with their addresses per network.
    serving_by_service: dict[tuple[str, str], list[TaskEntry]] = {}
    for t in attached:
        if t.serving and not (t.node == node and t.uid in leaving):
            serving_by_service.setdefault(t.service, []).append(t)

    virtual: dict[ServiceKey, VirtualService] = {}
    records: list[ServiceRecord] = []
    # By (namespace, name): which of two services claiming one port keeps it must not
    # depend on the order a cache lists them in (planindex decides the same way).
    for s in sorted(svcs, key=lambda s: (ts.namespace_of(s), s.name)):
        key = (ts.namespace_of(s), s.name)
        members = serving_by_service.get(key, [])
        ep = nw.endpoint(s)
        by_net = add_service_virtuals(
            virtual, problems, ep,
            [(t.node, [(a.network, a.ip) for a in t.attachments]) for t in members],
            node, hosted_ok, ingress)
        record = service_record(s, ep, by_net, ingress)
        if record is not None:
            records.append(record)
    clients: dict[tuple[str, IPv4Address], tuple[str, ...]] = {}
    for t in attached:
        if t.node != node:
            continue
        own = tuple(a.network for a in t.attachments if a.network != ingress)
        if len(own) > 1:  # one network: the listener it asks is the only one that matters
            for att in t.attachments:
                if att.network != ingress:
                    clients[(att.network, att.ip)] = own
    return Plan(overlay=NetworkState(tuple(sorted(overlay_nets, key=lambda n: n.name))),
                services=tuple(sorted(virtual.values(), key=service_order)),
                dns=tuple(records), listeners=listeners, problems=tuple(problems),
                clients=clients)


def service_record(service: Resource, ep: nw.Endpoint,
                   by_net: Mapping[str, list[IPv4Address]], ingress: str | None
                   ) -> ServiceRecord | None:
    """A service's DNS record, from its serving tasks' addresses by network; None for a
    service with no VIP, task or network to answer for."""
    dns_tasks = {n: tuple(sorted(ips)) for n, ips in by_net.items() if n != ingress}
    vips = {n: v for n, v in ep.vips.items() if n != ingress}
    if not (vips or dns_tasks or nw.service_networks(service)):
        return None
    aliases = {n: tuple(a) for n in nw.service_networks(service)
               if n != ingress and (a := nw.service_aliases(service, n))}
    return ServiceRecord(namespace=ts.namespace_of(service), name=service.name,
                         mode=nw.endpoint_mode(service), vips=vips,
                         tasks=_tasks_on_networks(service, dns_tasks, ingress),
                         aliases=aliases)


class _OnNetwork(Protocol):
    @property
    def network(self) -> str: ...


def default_network(atts: Sequence[_OnNetwork], infos: Mapping[str, nw.NetworkInfo]
                    ) -> str | None:
    """The network a task's default route goes through: its first not internal one."""
    for att in atts:
        info = infos.get(att.network)
        if info is not None and not info.internal:
            return att.network
    return None


def _tasks_on_networks(service: Resource, found: Mapping[str, tuple[IPv4Address, ...]],
                       ingress: str | None) -> dict[str, tuple[IPv4Address, ...]]:
    """Task addresses per network, with an empty entry for each network of the service
    that has none running: the name still resolves (NOERROR, no address) there."""
    out = dict(found)
    for name in nw.service_networks(service):
        if name != ingress:
            out.setdefault(name, ())
    return out


#: A serving task as a service's balancing reads it: its node, and its address on each
#: of its networks.
Member = tuple[str, Sequence[tuple[str, IPv4Address]]]


def add_service_virtuals(virtual: dict[ServiceKey, VirtualService], problems: list[str],
                         ep: nw.Endpoint, members: Sequence[Member], node: str,
                         hosted_ok: Container[str], ingress: str | None
                         ) -> dict[str, list[IPv4Address]]:
    """Add one service's VirtualServices to ``virtual`` (a port claimed twice goes to
    ``problems``) and return its serving addresses by network, for its DNS record. One
    function for the full plan and the incremental index (``planindex``), so the two
    cannot decide differently. ``hosted_ok``: the networks this node hosts."""
    by_net: dict[str, list[IPv4Address]] = {}
    for _node, addresses in members:
        for network, ip in addresses:
            by_net.setdefault(network, []).append(ip)
    for network, vip in ep.vips.items():
        if network not in hosted_ok:
            continue  # nobody here can reach it: no client on that network
        for proto in PROTOCOLS:
            add_service(virtual, VirtualService.make(
                str(vip), ALL_PORTS, proto,
                [Backend(ip, ALL_PORTS) for ip in by_net.get(network, ())]), problems)
    for port in ep.ports:
        if port.published is None:
            continue
        if port.mode == "ingress":
            if ingress is None or ingress not in hosted_ok:
                continue
            backends = [Backend(ip, port.target)
                        for _node, addresses in members for network, ip in addresses
                        if network == ingress]
        else:
            backends = [Backend(ip, port.target)
                        for where, addresses in members if where == node
                        for network, ip in addresses if network == ingress]
            if not backends:
                continue  # host mode: published only where a task runs
        add_service(virtual, VirtualService.make(None, port.published, port.protocol,
                                                 backends), problems)
    return by_net


def add_service(virtual: dict[ServiceKey, VirtualService],
                svc: VirtualService, problems: list[str]) -> None:
    if svc.key in virtual:
        # Two services claiming one published port (admission and the allocator prevent
        # it; a hand-written object may not): the first by namespace/name keeps it.
        problems.append(f"{svc.describe()} is claimed twice; the first service keeps it")
        return
    virtual[svc.key] = svc


def service_order(svc: VirtualService) -> tuple[int, int, str]:
    return (int(svc.vip) if svc.vip is not None else -1, svc.port, svc.protocol)
