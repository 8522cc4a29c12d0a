"""The node's dataplane plan kept current piece by piece, from informer events: pure.

``netplan.plan`` computes the whole plan from every cached object; at 10,000 services and
100,000 tasks that is O(cluster) per change. :class:`PlanIndex` is fed each object as it
changes (``put_*``), keeps the indexes a change needs to find what it touches (tasks by
service and by network, the remote peers of each network with reference counts, the
services with a VIP on each network, this node's own tasks), marks the pieces that
changed as dirty, and on :meth:`PlanIndex.step` recomputes only those -- one service's
``VirtualService``s and DNS record, one network's ``OverlayNetwork`` -- returning a
:class:`Delta` of what to apply. It keeps what it last returned (the "applied" state),
so a step's delta is a diff against it, and :meth:`PlanIndex.snapshot` returns that
state as a ``netplan.Plan``, which the agent's periodic pass compares with
``netplan.plan`` of the same objects: the full plan stays the reference, this is a
faster way to the same answer.

Per-piece rules are ``netplan``'s (its module docstring), applied to one key:

* a task (only tasks that are attached, not ended and placed count) dirties its service
  and every network it is on; a local task also dirties what this node hosts;
* a service dirties itself; a network or node change dirties every hosted network (their
  default routes and node peers read all networks), and the services whose VIPs or ports
  depend on what became hosted;
* a remote peer on a network is counted per task, so one task's change adds or removes
  at most its own peers (``Delta`` carries them; a full network sync is only needed when a
  network's parameters or this node's hosting change).

What it holds per task is a small ``netplan.TaskEntry``, not the task object: the
same entry the agent's task cache keeps (``dataplane``), so a task costs one entry.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

from shoal.agent import netplan
from shoal.agent.netplan import TaskEntry
from shoal.crds import networking as nw
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource
from shoal.net.dns import ServiceRecord
from shoal.net.lb import ServiceKey, VirtualService
from shoal.net.overlay import Attachment, NetworkState, OverlayNetwork, Peer

IPv4Address = ipaddress.IPv4Address
SvcKey = tuple[str, str]  # (namespace, service name)
ObjKey = tuple[str | None, str]  # an informer's cache key: (namespace, name)
_K = TypeVar("_K", bound=Hashable)


@dataclasses.dataclass(frozen=True)
class NetworkChange:
    """One hosted network to bring from ``old`` to ``new`` (None: not hosted). ``full``:
    sync the network whole (new, or its parameters changed); else only ``added`` and
    ``removed`` peers and the attachments that differ between ``old`` and ``new``."""

    old: OverlayNetwork | None
    new: OverlayNetwork | None
    full: bool
    added: tuple[Peer, ...] = ()
    removed: tuple[Peer, ...] = ()


@dataclasses.dataclass
class Delta:
    networks: list[NetworkChange] = dataclasses.field(default_factory=list)
    services: list[VirtualService] = dataclasses.field(default_factory=list)
    removed_services: list[ServiceKey] = dataclasses.field(default_factory=list)
    records: list[ServiceRecord] = dataclasses.field(default_factory=list)
    removed_records: list[SvcKey] = dataclasses.field(default_factory=list)
    listeners: dict[str, IPv4Address] | None = None  # None: unchanged
    clients: dict[tuple[str, IPv4Address], tuple[str, ...]] | None = None
    #: the service keys behind the changed VirtualServices and records (for logs)
    touched: set[SvcKey] = dataclasses.field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.networks or self.services or self.removed_services or self.records
                    or self.removed_records or self.listeners is not None
                    or self.clients is not None)


def service_pieces(svc: Resource, members: Iterable[TaskEntry], node: str,
                   hosted_ok: Mapping[str, OverlayNetwork], ingress: str | None
                   ) -> tuple[dict[ServiceKey, VirtualService], ServiceRecord | None,
                              list[str]]:
    """One service's VirtualServices (by key), DNS record and claim problems, from its
    serving tasks (``netplan.plan``'s per-service loop)."""
    members = list(members)
    virtual: dict[ServiceKey, VirtualService] = {}
    problems: list[str] = []
    ep = nw.endpoint(svc)
    by_net = netplan.add_service_virtuals(
        virtual, problems, ep, [(m.node, [(a.network, a.ip) for a in m.attachments])
                                for m in members], node, hosted_ok, ingress)
    record = netplan.service_record(svc, ep, by_net, ingress)
    return virtual, record, problems


class PlanIndex:
    """See the module docstring. ``node`` is this node's name."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.networks: dict[str, Resource] = {}
        self.infos: dict[str, nw.NetworkInfo] = {}
        self.ingress: str | None = None
        self.underlay: dict[str, IPv4Address] = {}
        self.services: dict[SvcKey, Resource] = {}
        self._service_of: dict[ObjKey, SvcKey] = {}
        self.tasks: dict[ObjKey, TaskEntry] = {}
        self.by_service: dict[SvcKey, set[ObjKey]] = {}
        self.by_network: dict[str, set[ObjKey]] = {}
        self.local: set[ObjKey] = set()
        self.local_uid: dict[str, ObjKey] = {}
        self.vip_services: dict[str, set[SvcKey]] = {}  # network -> services with a VIP there
        self.port_services: set[SvcKey] = set()  # services with a published port
        self.mesh_services: set[SvcKey] = set()  # services with an allocated ingress port
        # network -> remote task peers, counted (two tasks may share an address briefly)
        self.peer_counts: dict[str, Counter[Peer]] = {}
        # --- dirty marks ---
        self.dirty_services: set[SvcKey] = set()
        self.dirty_networks: set[str] = set()
        self.touched_peers: dict[str, set[Peer]] = {}
        self.whole_peers: set[str] = set()  # networks whose peers are diffed whole
        self.dirty_hosting = True
        self.dirty_everything = True
        # --- the applied state (what the last step returned) ---
        self.applied_networks: dict[str, OverlayNetwork] = {}  # peers=() (see _peers)
        self.applied_peers: dict[str, set[Peer]] = {}
        self.hosted: set[str] = set()
        self.host_problems: dict[str, str] = {}
        self.listeners: dict[str, IPv4Address] = {}
        self.clients: dict[tuple[str, IPv4Address], tuple[str, ...]] = {}
        self.claims: dict[ServiceKey, dict[SvcKey, VirtualService]] = {}
        self.svc_claims: dict[SvcKey, dict[ServiceKey, VirtualService]] = {}
        self.contested: set[ServiceKey] = set()  # claimed by more than one service
        self.svc_problems: dict[SvcKey, list[str]] = {}
        self.applied_services: dict[ServiceKey, VirtualService] = {}
        self.records: dict[SvcKey, ServiceRecord] = {}
        self._pids: dict[str, int] = {}
        self._leaving: frozenset[str] = frozenset()

    # --- events ---

    def put_task(self, key: ObjKey, new: TaskEntry | None) -> bool:
        """A task added or updated (its ``netplan.task_entry``), or deleted or no longer
        counted (None); whether the plan cares."""
        old = self.tasks.get(key)
        if old == new:
            return False
        if old is not None:
            self._unindex_task(key, old)
        if new is not None:
            self._index_task(key, new)
        return True

    def _index_task(self, key: ObjKey, e: TaskEntry) -> None:
        self.tasks[key] = e
        self.by_service.setdefault(e.service, set()).add(key)
        self.dirty_services.add(e.service)
        local = e.node == self.node
        if local:
            self.local.add(key)
            self.local_uid[e.uid] = key
            self.dirty_hosting = True
        under = self.underlay.get(e.node)
        for att in e.attachments:
            self.by_network.setdefault(att.network, set()).add(key)
            self.dirty_networks.add(att.network)
            if not local and under is not None:
                peer = Peer(att.ip, under)
                self.peer_counts.setdefault(att.network, Counter())[peer] += 1
                self.touched_peers.setdefault(att.network, set()).add(peer)

    def _unindex_task(self, key: ObjKey, e: TaskEntry) -> None:
        del self.tasks[key]
        _discard(self.by_service, e.service, key)
        self.dirty_services.add(e.service)
        local = e.node == self.node
        if local:
            self.local.discard(key)
            if self.local_uid.get(e.uid) == key:
                del self.local_uid[e.uid]
            self.dirty_hosting = True
        under = self.underlay.get(e.node)
        for att in e.attachments:
            _discard(self.by_network, att.network, key)
            self.dirty_networks.add(att.network)
            if not local and under is not None:
                peer = Peer(att.ip, under)
                counts = self.peer_counts[att.network]
                counts[peer] -= 1
                if counts[peer] <= 0:
                    del counts[peer]
                self.touched_peers.setdefault(att.network, set()).add(peer)

    def put_service(self, key: ObjKey, svc: Resource | None) -> None:
        skey = self._service_of.pop(key, None)
        if skey is None and svc is not None:
            skey = (ts.namespace_of(svc), svc.name)
        if skey is None:
            return
        self.services.pop(skey, None)
        for users in self.vip_services.values():
            users.discard(skey)
        self.port_services.discard(skey)
        if skey in self.mesh_services:
            self.mesh_services.discard(skey)
            self.dirty_hosting = True
        self.dirty_services.add(skey)
        if svc is None:
            return
        self._service_of[key] = skey
        self.services[skey] = svc
        ep = nw.endpoint(svc)
        for network in ep.vips:
            self.vip_services.setdefault(network, set()).add(skey)
        if any(p.published is not None for p in ep.ports):
            self.port_services.add(skey)
        if any(p.mode == "ingress" and p.published is not None for p in ep.ports):
            self.mesh_services.add(skey)
            self.dirty_hosting = True

    def put_network(self, key: ObjKey, net: Resource | None) -> None:
        name = key[1]
        if net is None:
            self.networks.pop(name, None)
            self.infos.pop(name, None)
        else:
            self.networks[name] = net
            info = nw.network_info(net)
            if info is None:
                self.infos.pop(name, None)
            else:
                self.infos[name] = info
        ingress = nw.ingress_name(self.networks.values())
        if ingress != self.ingress:
            self.ingress = ingress
            self.dirty_everything = True  # DNS records and ports read the ingress's name
        self.dirty_hosting = True
        self.dirty_networks.update(self.hosted)
        self.dirty_networks.add(name)
        self.whole_peers.update(self.hosted)
        self.whole_peers.add(name)

    def put_node(self, key: ObjKey, node: Resource | None) -> None:
        name = key[1]
        address: IPv4Address | None = None
        if node is not None:
            try:
                address = IPv4Address(str(node.status.get("address") or ""))
            except ValueError:
                address = None
        if self.underlay.get(name) == address:
            return
        if address is None:
            self.underlay.pop(name, None)
        else:
            self.underlay[name] = address
        # Every peer behind that node moves: count the peers again (rare: a node's
        # underlay address is set once, when it joins).
        self._recount_peers()
        self.dirty_networks.update(self.hosted)
        self.whole_peers.update(self.hosted)

    def _recount_peers(self) -> None:
        old = self.peer_counts
        self.peer_counts = {}
        for e in self.tasks.values():
            under = self.underlay.get(e.node)
            if e.node == self.node or under is None:
                continue
            for att in e.attachments:
                self.peer_counts.setdefault(att.network, Counter())[
                    Peer(att.ip, under)] += 1
        for network in set(old) | set(self.peer_counts):
            before, after = old.get(network, Counter()), self.peer_counts.get(network,
                                                                                Counter())
            if before != after:
                self.touched_peers.setdefault(network, set()).update(
                    set(before) ^ set(after))

    def rebuild(self) -> None:
        """Forget the applied state: the next step recomputes every piece (after the
        agent applied a full plan because this state was found wrong)."""
        self.applied_networks.clear()
        self.applied_peers.clear()
        self.hosted = set()
        self.host_problems = {}
        self.listeners = {}
        self.clients = {}
        self.claims.clear()
        self.contested.clear()
        self.svc_claims.clear()
        self.svc_problems.clear()
        self.applied_services.clear()
        self.records.clear()
        self._pids, self._leaving = {}, frozenset()
        self.dirty_everything = True

    # --- planning ---

    def step(self, pids: Mapping[str, int], leaving: Iterable[str]) -> Delta:
        """Recompute what is dirty; return what changed since the last step (and take
        it as applied)."""
        leaving = frozenset(leaving)
        delta = Delta()
        self._local_changes(pids, leaving)
        if self.dirty_everything:
            self.dirty_services.update(self.services)
            self.dirty_services.update(self.svc_claims)
            self.dirty_services.update(self.records)
            self.dirty_networks.update(self.hosted)
            self.dirty_networks.update(self.applied_networks)
            self.dirty_hosting = True
        if self.dirty_hosting:
            self._hosting(delta)
        self._networks(delta)
        self._services(delta)
        self.dirty_everything = False
        self.dirty_hosting = False
        return delta

    def _local_changes(self, pids: Mapping[str, int], leaving: frozenset[str]) -> None:
        """A local task's pid or leaving mark changed: its attachments and its service's
        backends follow."""
        changed = {u for u in set(pids) | set(self._pids) if pids.get(u) != self._pids.get(u)}
        changed |= leaving ^ self._leaving
        self._pids, self._leaving = dict(pids), leaving
        for uid in changed:
            key = self.local_uid.get(uid)
            entry = self.tasks.get(key) if key is not None else None
            if entry is None:
                continue
            self.dirty_services.add(entry.service)
            self.dirty_networks.update(a.network for a in entry.attachments)
            self.dirty_hosting = True  # the clients map reads local tasks

    def _hosting(self, delta: Delta) -> None:
        hosted: set[str] = set()
        for key in self.local:
            hosted.update(a.network for a in self.tasks[key].attachments)
        if self.ingress is not None and self.mesh_services:
            hosted.add(self.ingress)
        problems: dict[str, str] = {}
        ok: set[str] = set()
        listeners: dict[str, IPv4Address] = {}
        for name in hosted:
            info = self.infos.get(name)
            if info is None:
                problems[name] = f"network {name} is not allocated"
                continue
            mine = info.node_addresses.get(self.node)
            if mine is None:
                problems[name] = f"this node has no address on network {name} yet"
                continue
            ok.add(name)
            if not info.ingress:
                listeners[name] = mine
        before = set(self.applied_networks)
        for name in ok ^ before:
            self.dirty_networks.add(name)
            self.dirty_services.update(self.vip_services.get(name, ()))
            if name == self.ingress:
                self.dirty_services.update(self.port_services)
        self.hosted = ok
        self.host_problems = problems
        if listeners != self.listeners:
            self.listeners = listeners
            delta.listeners = dict(listeners)
        clients: dict[tuple[str, IPv4Address], tuple[str, ...]] = {}
        for key in self.local:
            atts = self.tasks[key].attachments
            own = tuple(a.network for a in atts if a.network != self.ingress)
            if len(own) > 1:
                for att in atts:
                    if att.network != self.ingress:
                        clients[(att.network, att.ip)] = own
        if clients != self.clients:
            self.clients = clients
            delta.clients = dict(clients)

    def overlay_network(self, name: str) -> OverlayNetwork | None:
        """The hosted network ``name`` without its peers (see ``peers``), or None when this
        node does not host it."""
        if name not in self.hosted:
            return None
        info = self.infos[name]
        local: list[Attachment] = []
        for key in self.local:  # not by_network: a big network's tasks are mostly remote
            e = self.tasks[key]
            pid = self._pids.get(e.uid)
            if pid is None:
                continue
            for index, att in enumerate(e.attachments):
                if att.network == name:
                    local.append(Attachment(
                        key=e.uid, netns=f"/proc/{pid}/ns/net", ifname=f"eth{index}",
                        address=att.address,
                        default_route=netplan.default_network(
                            list(e.attachments), self.infos) == name))
        return OverlayNetwork(
            name=name, vni=info.vni, subnet=info.subnet,
            node_address=info.node_addresses[self.node], vip_range=info.vip_range,
            internal=info.internal, attachments=tuple(sorted(local, key=lambda a: a.key)))

    def node_peers(self, name: str) -> set[Peer]:
        info = self.infos.get(name)
        if info is None:
            return set()
        return {Peer(address, self.underlay[other])
                for other, address in info.node_addresses.items()
                if other != self.node and other in self.underlay}

    def peers(self, name: str) -> set[Peer]:
        """Every remote endpoint the network ``name`` should program."""
        return set(self.peer_counts.get(name, ())) | self.node_peers(name)

    def _networks(self, delta: Delta) -> None:
        for name in sorted(self.dirty_networks):
            old = self.applied_networks.get(name)
            new = self.overlay_network(name)
            if new is None:
                if old is not None:
                    del self.applied_networks[name]
                    self.applied_peers.pop(name, None)
                    delta.networks.append(NetworkChange(old, None, full=True))
                continue
            if old is None or not same_parameters(old, new) or name not in self.applied_peers:
                peers = self.peers(name)
                self.applied_networks[name] = new
                self.applied_peers[name] = peers
                delta.networks.append(NetworkChange(
                    old, dataclasses.replace(new, peers=tuple(peers)), full=True))
                continue
            applied = self.applied_peers[name]
            want_node = self.node_peers(name)
            counts = self.peer_counts.get(name, Counter())
            if name in self.whole_peers:
                # A network or node changed: node peers may have gone too; diff it all.
                candidates = applied | set(counts) | want_node
            else:
                candidates = self.touched_peers.get(name, set()) | want_node
            added = [p for p in candidates if (p in counts or p in want_node)
                     and p not in applied]
            removed = [p for p in candidates if not (p in counts or p in want_node)
                       and p in applied]
            applied.update(added)
            applied.difference_update(removed)
            if added or removed or new != old:
                self.applied_networks[name] = new
                delta.networks.append(NetworkChange(old, new, full=False,
                                                    added=tuple(added),
                                                    removed=tuple(removed)))
        self.dirty_networks.clear()
        self.touched_peers.clear()
        self.whole_peers.clear()

    def _services(self, delta: Delta) -> None:
        hosted_ok = {n: net for n, net in self.applied_networks.items()}
        touched_keys: set[ServiceKey] = set()
        for skey in self.dirty_services:
            svc = self.services.get(skey)
            virtual: dict[ServiceKey, VirtualService] = {}
            record: ServiceRecord | None = None
            problems: list[str] = []
            if svc is not None:
                members = (self.tasks[k] for k in self.by_service.get(skey, ()))
                serving = [m for m in members if m.serving and not (
                    m.node == self.node and m.uid in self._leaving)]
                virtual, record, problems = service_pieces(
                    svc, serving, self.node, hosted_ok, self.ingress)
            old = self.svc_claims.pop(skey, {})
            for vkey in set(old) | set(virtual):
                touched_keys.add(vkey)
                holders = self.claims.setdefault(vkey, {})
                if vkey in virtual:
                    holders[skey] = virtual[vkey]
                else:
                    holders.pop(skey, None)
                if len(holders) > 1:
                    self.contested.add(vkey)
                else:
                    self.contested.discard(vkey)
                if not holders:
                    del self.claims[vkey]
            if virtual:
                self.svc_claims[skey] = virtual
            if problems:
                self.svc_problems[skey] = problems
            else:
                self.svc_problems.pop(skey, None)
            if record != self.records.get(skey):
                delta.touched.add(skey)
                if record is None:
                    del self.records[skey]
                    delta.removed_records.append(skey)
                else:
                    self.records[skey] = record
                    delta.records.append(record)
        self.dirty_services.clear()
        for vkey in sorted(touched_keys, key=_vkey_order):
            claimants = self.claims.get(vkey)
            want = claimants[min(claimants)] if claimants else None
            if want == self.applied_services.get(vkey):
                continue
            if claimants:
                delta.touched.add(min(claimants))
            if want is None:
                del self.applied_services[vkey]
                delta.removed_services.append(vkey)
            else:
                self.applied_services[vkey] = want
                delta.services.append(want)

    # --- views ---

    def plumbed(self, uid: str) -> bool:
        """Whether the applied state has a veth for local task ``uid``."""
        key = self.local_uid.get(uid)
        entry = self.tasks.get(key) if key is not None else None
        if entry is None:
            return False
        return any(a.key == uid for a0 in entry.attachments
                   if (net := self.applied_networks.get(a0.network)) is not None
                   for a in net.attachments)

    def problems(self) -> tuple[str, ...]:
        out = list(self.host_problems.values())
        for vkey in sorted(self.contested, key=_vkey_order):
            holders = self.claims[vkey]
            out.extend(f"{v.describe()} is claimed twice; the first service keeps it"
                       for k, v in sorted(holders.items())[1:])
        for skey in sorted(self.svc_problems):
            out.extend(self.svc_problems[skey])
        return tuple(out)

    def snapshot(self) -> netplan.Plan:
        """The applied state as a plan (O(cluster): for the periodic comparison)."""
        nets = tuple(dataclasses.replace(
            n, peers=tuple(sorted(self.applied_peers.get(n.name, ()),
                                  key=lambda p: (int(p.address), int(p.underlay)))))
            for _, n in sorted(self.applied_networks.items()))
        return netplan.Plan(
            overlay=NetworkState(nets),
            services=tuple(sorted(self.applied_services.values(),
                                  key=netplan.service_order)),
            dns=tuple(r for _, r in sorted(self.records.items())),
            listeners=dict(self.listeners), problems=self.problems(),
            clients=dict(self.clients))


def same_parameters(a: OverlayNetwork, b: OverlayNetwork) -> bool:
    """Everything of a network but its attachments and peers."""
    return (a.name, a.vni, a.subnet, a.node_address, a.vip_range, a.internal) == (
        b.name, b.vni, b.subnet, b.node_address, b.vip_range, b.internal)


def differences(a: netplan.Plan, b: netplan.Plan, limit: int = 10) -> list[str]:
    """What differs between two plans, in words (at most ``limit`` items per part);
    DNS records and problems compared regardless of order."""
    out: list[str] = []
    an = {n.name: n for n in a.overlay.networks}
    bn = {n.name: n for n in b.overlay.networks}
    for name in sorted(set(an) | set(bn)):
        x, y = an.get(name), bn.get(name)
        if x == y:
            continue
        if x is None or y is None:
            out.append(f"network {name}: {'missing' if x is None else 'extra'}")
            continue
        if not same_parameters(x, y):
            out.append(f"network {name}: parameters {x.vni}/{x.subnet} vs {y.vni}/{y.subnet}")
        if x.attachments != y.attachments:
            out.append(f"network {name}: attachments {[t.key for t in x.attachments]} vs "
                       f"{[t.key for t in y.attachments]}")
        if x.peers != y.peers:
            xp, yp = set(x.peers), set(y.peers)
            out.append(f"network {name}: peers only in first "
                       f"{sorted(str(p.address) for p in xp - yp)[:limit]}, only in second "
                       f"{sorted(str(p.address) for p in yp - xp)[:limit]}")
    av = {s.key: s for s in a.services}
    bv = {s.key: s for s in b.services}
    diff_v = [k for k in set(av) | set(bv) if av.get(k) != bv.get(k)]
    for k in sorted(diff_v, key=_vkey_order)[:limit]:
        va, vb = av.get(k), bv.get(k)
        out.append(f"service {_describe(k)}: {_backends(va)} vs {_backends(vb)}")
    ad = {(r.namespace, r.name): r for r in a.dns}
    bd = {(r.namespace, r.name): r for r in b.dns}
    diff_d = sorted(k for k in set(ad) | set(bd) if ad.get(k) != bd.get(k))
    out.extend(f"dns record {k[0]}/{k[1]}: {ad.get(k)} vs {bd.get(k)}"
               for k in diff_d[:limit])
    if dict(a.listeners) != dict(b.listeners):
        out.append(f"listeners {dict(a.listeners)} vs {dict(b.listeners)}")
    if dict(a.clients) != dict(b.clients):
        out.append("dns clients differ")
    if sorted(a.problems) != sorted(b.problems):
        out.append(f"problems {sorted(a.problems)} vs {sorted(b.problems)}")
    return out


def _backends(svc: VirtualService | None) -> str:
    if svc is None:
        return "absent"
    return "[" + ", ".join(b.text for b in svc.backends) + "]"


def _describe(key: ServiceKey) -> str:
    vip, port, proto = key
    return f"{'*' if vip is None else vip}:{port}/{proto}"


def _vkey_order(key: ServiceKey) -> tuple[int, int, str]:
    vip, port, proto = key
    return (int(vip) if vip is not None else -1, port, proto)


def _discard(index: dict[_K, set[ObjKey]], name: _K, key: ObjKey) -> None:
    members = index.get(name)
    if members is not None:
        members.discard(key)
        if not members:
            del index[name]
