"""IPAM: network subnets, VXLAN VNIs, task/node/VIP addresses and ingress ports.

Pure logic, no I/O. It lives in the allocator controller's package, like the scheduler's
placement and the orchestrator's slot planning: the allocator is its only user and the
only writer of allocations, and controllers may not import ``shoal.net`` (the agent's
dataplane only reads allocations back from the objects, see ``shoal.crds.networking``).

The allocator controller rebuilds an :class:`Allocator` from what etcd already holds
(``Allocator.from_state``, or ``adopt_*`` record by record), asks it for what is missing
and persists the answers; so every decision is a function of the current allocations
alone and survives a controller restart without a private database. Requests are
idempotent: asking again for something an owner already holds returns the existing
allocation, which makes a retried reconcile harmless.

The scheme (see docs/networking.md):

* subnets: /24 blocks from 10.0.0.0/8, lowest free first (Swarm's default pool); the
  ``ingress`` network gets 10.255.0.0/20. The ingress range and the VIP pool are carved out
  of the default pool so the pool can never hand them out.
* VNIs: lowest free from 4096 (Swarm's first VNI).
* task and node addresses: hosts of the network's subnet, never the gateway. The next
  address after the highest one in use, wrapping to the lowest free one: a released address
  is not handed out again until the range has been walked once, so stale neighbour and
  conntrack entries elsewhere in the cluster age out before an address is reused.
* VIPs: off-link. Each (non-ingress) network owns a block of the VIP pool, by default a /24
  of 10.254.0.0/16; its VIPs come from that block. Tasks route the block via their node's
  own address on the network, so a VIP is never an on-link address and nobody on the shared
  L2 is ever asked to answer ARP for it.
* ingress published ports: the requested one, or the lowest free in 30000-32767. Ports are
  cluster-wide per protocol; a conflict names the service holding the port.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shoal.crds import networking as nw

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network

AddressKind = Literal["task", "node", "vip"]
Protocol = Literal["tcp", "udp"]

DEFAULT_POOL = "10.0.0.0/8"
DEFAULT_SUBNET_PREFIX = 24
# A /20 (4,094 task addresses), not the whole 10.255.0.0/16: the top of that range
# (10.255.255.x) is where cloud hosts often keep their resolver, and a node routes
# its ingress subnet onto the overlay (the overlay refuses a subnet holding the host's
# nameserver, gateway or routes rather than capture that traffic).
DEFAULT_INGRESS_SUBNET = "10.255.0.0/20"
DEFAULT_VIP_POOL = nw.SERVICE_VIP_POOL
DEFAULT_VIP_BLOCK_PREFIX = 24
VNI_FIRST = 4096  # Swarm starts here; below is left for hand-made VXLANs.
VNI_LAST = (1 << 24) - 1
INGRESS_PORT_FIRST = 30000
INGRESS_PORT_LAST = 32767


class IpamError(Exception):
    """Base class of allocation failures; messages name what is missing or who holds it."""


class ExhaustedError(IpamError):
    """A pool has nothing left to give."""


class ConflictError(IpamError):
    """A requested value is already held; ``holder`` names who holds it."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class UnknownNetworkError(IpamError):
    def __init__(self, network: str) -> None:
        super().__init__(f"network {network!r} has no allocation (allocate the network first)")
        self.network = network


@dataclass(frozen=True)
class NetworkAllocation:
    """What a Network resource gets: persisted by the controller in Network.status."""

    name: str
    subnet: IPv4Network
    gateway: IPv4Address
    vni: int
    ingress: bool = False
    vip_range: IPv4Network | None = None  # None for ingress: the mesh needs no VIPs


@dataclass(frozen=True)
class AddressAllocation:
    """One address on one network: a task's, a node's own (gateway + DNS), or a VIP."""

    network: str
    kind: AddressKind
    owner: str  # task uid, node name, or "<namespace>/<service>"
    address: IPv4Address


@dataclass(frozen=True)
class PortRequest:
    """One entry of Service spec.endpoint.ports that is published in ingress mode."""

    target: int
    protocol: Protocol = "tcp"
    published: int | None = None


@dataclass(frozen=True)
class PortAllocation:
    service: str  # "<namespace>/<service>"
    protocol: Protocol
    published: int
    target: int


@dataclass(frozen=True)
class PoolConfig:
    """Where allocations come from; the defaults are Swarm's plus Shoal's VIP pool."""

    pool: str = DEFAULT_POOL
    subnet_prefix: int = DEFAULT_SUBNET_PREFIX
    ingress_subnet: str = DEFAULT_INGRESS_SUBNET
    vip_pool: str = DEFAULT_VIP_POOL
    vip_block_prefix: int = DEFAULT_VIP_BLOCK_PREFIX
    port_range: tuple[int, int] = (INGRESS_PORT_FIRST, INGRESS_PORT_LAST)
    vni_range: tuple[int, int] = (VNI_FIRST, VNI_LAST)


@dataclass
class _NetState:
    alloc: NetworkAllocation
    first: int  # first and last assignable host address (as ints)
    last: int
    used: dict[int, tuple[AddressKind, str]] = field(default_factory=dict)
    used_sorted: list[int] = field(default_factory=list)  # task/node addresses, sorted
    by_owner: dict[tuple[AddressKind, str], IPv4Address] = field(default_factory=dict)


def _span(net: IPv4Network) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


def _hosts_span(net: IPv4Network) -> tuple[int, int]:
    """Assignable range: all but network and broadcast address (/31 and /32 have none)."""
    start, end = _span(net)
    if net.prefixlen >= 31:
        return start, end
    return start + 1, end - 1


class Allocator:
    """The cluster's allocations and the rules to extend them. Not thread-safe: the
    allocator controller is the only writer (leader-elected)."""

    def __init__(self, config: PoolConfig | None = None) -> None:
        self.config = cfg = config or PoolConfig()
        self.pool = ipaddress.IPv4Network(cfg.pool)
        self.subnet_prefix = cfg.subnet_prefix
        self.ingress_subnet = ipaddress.IPv4Network(cfg.ingress_subnet)
        self.vip_pool = ipaddress.IPv4Network(cfg.vip_pool)
        self.vip_block_prefix = cfg.vip_block_prefix
        self.port_range = cfg.port_range
        self.vni_range = cfg.vni_range
        if not self.pool.prefixlen <= self.subnet_prefix <= 30:
            raise ValueError(f"subnet prefix /{self.subnet_prefix} does not fit {self.pool}")
        if not self.vip_pool.prefixlen <= self.vip_block_prefix <= 30:
            raise ValueError(f"VIP block /{self.vip_block_prefix} does not fit {self.vip_pool}")
        self._nets: dict[str, _NetState] = {}
        self._vnis: dict[int, str] = {}
        self._ports: dict[tuple[Protocol, int], PortAllocation] = {}
        self._ports_by_service: dict[str, list[PortAllocation]] = {}

    # ---- rebuilding from persisted state -------------------------------------------------

    @classmethod
    def from_state(
        cls,
        networks: Iterable[NetworkAllocation],
        addresses: Iterable[AddressAllocation] = (),
        ports: Iterable[PortAllocation] = (),
        config: PoolConfig | None = None,
    ) -> Allocator:
        """Rebuild from what etcd holds. Two records claiming the same thing is corruption
        (or two writers): refuse loudly rather than hand the value out a third time."""
        alloc = cls(config)
        for net in networks:
            alloc.adopt_network(net)
        for a in addresses:
            alloc.adopt_address(a)
        for p in ports:
            alloc.adopt_port(p)
        return alloc

    # The adopt_* methods record one allocation read back from etcd. They raise
    # ConflictError when it collides with one already recorded; ``from_state`` lets that
    # propagate, the allocator controller adopts record by record, oldest object first,
    # and re-allocates the newcomer instead of refusing to start.

    def adopt_network(self, net: NetworkAllocation) -> None:
        if net.name in self._nets:
            raise ConflictError(f"network {net.name!r} is recorded twice", net.name)
        self._check_subnet_free(net.subnet, for_network=net.name)
        if net.vni in self._vnis:
            raise ConflictError(f"VNI {net.vni} of network {net.name!r} is already held by "
                                f"network {self._vnis[net.vni]!r}", self._vnis[net.vni])
        if net.vip_range is not None:
            for other in self._nets.values():
                rng = other.alloc.vip_range
                if rng is not None and rng.overlaps(net.vip_range):
                    raise ConflictError(
                        f"VIP range {net.vip_range} of network {net.name!r} overlaps "
                        f"{rng} of network {other.alloc.name!r}", other.alloc.name)
        first, last = _hosts_span(net.subnet)
        st = _NetState(net, first, last)
        # The gateway is never handed out: Swarm reserves it, and users may point at it.
        st.used[int(net.gateway)] = ("node", "<gateway>")
        self._nets[net.name] = st
        self._vnis[net.vni] = net.name

    def adopt_address(self, a: AddressAllocation) -> None:
        st = self._net(a.network)
        key = (a.kind, a.owner)
        if key in st.by_owner:
            if st.by_owner[key] == a.address:
                return
            raise ConflictError(f"{a.kind} {a.owner!r} holds two addresses on network "
                                f"{a.network!r}", a.owner)
        value = int(a.address)
        holder = st.used.get(value)
        if holder is not None:
            raise ConflictError(f"address {a.address} on network {a.network!r} is held by "
                                f"{holder[0]} {holder[1]!r}", holder[1])
        self._check_in_range(st, a)
        self._record(st, key, value)

    def adopt_port(self, p: PortAllocation) -> None:
        held = self._ports.get((p.protocol, p.published))
        if held is not None and held.service != p.service:
            raise ConflictError(f"published port {p.published}/{p.protocol} is held by both "
                                f"{held.service!r} and {p.service!r}", held.service)
        if held is None:
            self._ports[(p.protocol, p.published)] = p
            self._ports_by_service.setdefault(p.service, []).append(p)

    # ---- networks ------------------------------------------------------------------------

    def network(self, name: str) -> NetworkAllocation:
        return self._net(name).alloc

    def networks(self) -> list[NetworkAllocation]:
        return [st.alloc for st in self._nets.values()]

    def allocate_network(
        self,
        name: str,
        *,
        subnet: str | None = None,
        gateway: str | None = None,
        ingress: bool = False,
    ) -> NetworkAllocation:
        """A subnet (requested or from the pool), a gateway (requested or the first host),
        a VNI and, unless ingress, a VIP block. Idempotent for an existing network as long
        as the request agrees with what it holds."""
        existing = self._nets.get(name)
        if existing is not None:
            have = existing.alloc
            if subnet is not None and ipaddress.IPv4Network(subnet) != have.subnet:
                raise ConflictError(f"network {name!r} already has subnet {have.subnet}; "
                                    f"it cannot change to {subnet}", name)
            if gateway is not None and ipaddress.IPv4Address(gateway) != have.gateway:
                raise ConflictError(f"network {name!r} already has gateway {have.gateway}; "
                                    f"it cannot change to {gateway}", name)
            return have
        if ingress:
            for st in self._nets.values():
                if st.alloc.ingress:
                    raise ConflictError(f"there is already an ingress network: "
                                        f"{st.alloc.name!r}", st.alloc.name)
        if subnet is not None:
            try:
                net = ipaddress.IPv4Network(subnet)
            except ValueError as exc:
                raise IpamError(f"network {name!r}: invalid subnet {subnet!r}: {exc}") from None
            if net.prefixlen > 30:
                raise IpamError(f"network {name!r}: subnet {net} is too small (at most /30)")
            self._check_subnet_free(net, for_network=name)
        elif ingress:
            net = self.ingress_subnet
            self._check_subnet_free(net, for_network=name)
        else:
            net = self._free_subnet(name)
        if gateway is not None:
            gw = ipaddress.IPv4Address(gateway)
            if gw not in net or gw in (net.network_address, net.broadcast_address):
                raise IpamError(f"network {name!r}: gateway {gw} is not a host of {net}")
        else:
            gw = ipaddress.IPv4Address(_hosts_span(net)[0])
        vni = self._free_vni(name)
        vip_range = None if ingress else self._free_vip_block(name)
        alloc = NetworkAllocation(name, net, gw, vni, ingress, vip_range)
        self.adopt_network(alloc)
        return alloc

    def release_network(self, name: str) -> None:
        """Forget a network and everything allocated on it. Unknown names are fine."""
        st = self._nets.pop(name, None)
        if st is not None:
            self._vnis.pop(st.alloc.vni, None)

    def _reserved(self) -> list[tuple[tuple[int, int], str]]:
        out = [(_span(st.alloc.subnet), f"network {st.alloc.name!r}")
               for st in self._nets.values()]
        out.append((_span(self.vip_pool), f"the VIP pool {self.vip_pool}"))
        return out

    def _check_subnet_free(self, net: IPv4Network, *, for_network: str) -> None:
        # The rule is networking.subnet_overlap's, which `swctl apply` also asks.
        clash = nw.subnet_overlap(net, for_network,
                                  [(st.alloc.name, st.alloc.subnet)
                                   for st in self._nets.values()], self.vip_pool)
        if clash is not None:
            raise ConflictError(clash.message, clash.holder)

    def _free_subnet(self, name: str) -> IPv4Network:
        size = 1 << (32 - self.subnet_prefix)
        base, pool_end = _span(self.pool)
        count = (pool_end - base + 1) // size
        blocked: set[int] = set()
        # The ingress range is blocked even before an ingress network exists, so creating
        # ingress later never finds its range taken by an ordinary network.
        ranges = [span for span, _ in self._reserved()] + [_span(self.ingress_subnet)]
        for lo, hi in ranges:
            if hi < base or lo > pool_end:
                continue
            first = max(0, (lo - base) // size)
            last = min(count - 1, (hi - base) // size)
            blocked.update(range(first, last + 1))
        for i in range(count):
            if i not in blocked:
                return ipaddress.IPv4Network((base + i * size, self.subnet_prefix))
        raise ExhaustedError(f"no free /{self.subnet_prefix} left in pool {self.pool} for "
                             f"network {name!r} ({len(self._nets)} networks exist); give the "
                             "network an explicit subnet")

    def _free_vni(self, name: str) -> int:
        lo, hi = self.vni_range
        for vni in range(lo, hi + 1):
            if vni not in self._vnis:
                return vni
        raise ExhaustedError(f"no free VXLAN VNI in {lo}-{hi} for network {name!r}")

    def _free_vip_block(self, name: str) -> IPv4Network:
        taken = [st.alloc.vip_range for st in self._nets.values()
                 if st.alloc.vip_range is not None]
        for block in self.vip_pool.subnets(new_prefix=self.vip_block_prefix):
            if not any(block.overlaps(t) for t in taken):
                return block
        raise ExhaustedError(
            f"the service VIP pool {self.vip_pool} is exhausted: {len(taken)} networks hold "
            f"/{self.vip_block_prefix} VIP blocks, none left for network {name!r}")

    # ---- addresses -----------------------------------------------------------------------

    def allocate_task_address(self, network: str, task: str) -> IPv4Address:
        return self._allocate(network, "task", task)

    def allocate_node_address(self, network: str, node: str) -> IPv4Address:
        """The node's own address on the network: its tasks' gateway and DNS server, and the
        source of masqueraded VIP traffic (so it must be unique per node)."""
        return self._allocate(network, "node", node)

    def allocate_vip(self, network: str, service: str) -> IPv4Address:
        st = self._net(network)
        if st.alloc.vip_range is None:
            raise IpamError(f"network {network!r} is the ingress network: it carries no "
                            "service VIPs")
        return self._allocate(network, "vip", service)

    def release_task_address(self, network: str, task: str) -> None:
        self._release(network, "task", task)

    def release_node_address(self, network: str, node: str) -> None:
        self._release(network, "node", node)

    def release_vip(self, network: str, service: str) -> None:
        self._release(network, "vip", service)

    def address_of(self, network: str, kind: AddressKind, owner: str) -> IPv4Address | None:
        st = self._nets.get(network)
        return None if st is None else st.by_owner.get((kind, owner))

    def holders(self, network: str, kind: AddressKind) -> dict[str, IPv4Address]:
        """Owner -> address of every ``kind`` address on ``network`` (empty if unknown)."""
        st = self._nets.get(network)
        if st is None:
            return {}
        return {owner: addr for (k, owner), addr in st.by_owner.items() if k == kind}

    def address_count(self) -> int:
        """How many addresses are held, without building an object for each."""
        return sum(len(st.by_owner) for st in self._nets.values())

    def addresses(self) -> list[AddressAllocation]:
        return [AddressAllocation(st.alloc.name, kind, owner, addr)
                for st in self._nets.values() for (kind, owner), addr in st.by_owner.items()]

    def _net(self, network: str) -> _NetState:
        st = self._nets.get(network)
        if st is None:
            raise UnknownNetworkError(network)
        return st

    def _check_in_range(self, st: _NetState, a: AddressAllocation) -> None:
        if a.kind == "vip":
            rng = st.alloc.vip_range
            ok = rng is not None and a.address in rng and a.address not in (
                rng.network_address, rng.broadcast_address)
        else:
            ok = st.first <= int(a.address) <= st.last
        if not ok:
            raise IpamError(f"{a.kind} address {a.address} of {a.owner!r} is outside the "
                            f"range of network {a.network!r}")

    def _record(self, st: _NetState, key: tuple[AddressKind, str], value: int) -> None:
        st.used[value] = key
        st.by_owner[key] = ipaddress.IPv4Address(value)
        if key[0] != "vip":
            bisect.insort(st.used_sorted, value)

    def _allocate(self, network: str, kind: AddressKind, owner: str) -> IPv4Address:
        st = self._net(network)
        have = st.by_owner.get((kind, owner))
        if have is not None:
            return have
        if kind == "vip":
            assert st.alloc.vip_range is not None
            first, last = _hosts_span(st.alloc.vip_range)
            value = self._lowest_free(st, first, last)
        else:
            first, last = st.first, st.last
            value = None
            if st.used_sorted and st.used_sorted[-1] < last:
                nxt = st.used_sorted[-1] + 1
                if nxt not in st.used:
                    value = nxt
            if value is None:
                value = self._lowest_free(st, first, last)
        if value is None:
            what = "VIP block " + str(st.alloc.vip_range) if kind == "vip" else (
                "subnet " + str(st.alloc.subnet))
            raise ExhaustedError(f"network {network!r}: {what} has no free address for "
                                 f"{kind} {owner!r}")
        self._record(st, (kind, owner), value)
        return ipaddress.IPv4Address(value)

    @staticmethod
    def _lowest_free(st: _NetState, first: int, last: int) -> int | None:
        for value in range(first, last + 1):
            if value not in st.used:
                return value
        return None

    def _release(self, network: str, kind: AddressKind, owner: str) -> None:
        st = self._nets.get(network)
        if st is None:
            return
        addr = st.by_owner.pop((kind, owner), None)
        if addr is None:
            return
        value = int(addr)
        del st.used[value]
        if kind != "vip":
            i = bisect.bisect_left(st.used_sorted, value)
            if i < len(st.used_sorted) and st.used_sorted[i] == value:
                st.used_sorted.pop(i)

    # ---- ingress published ports ---------------------------------------------------------

    def allocate_ports(self, service: str, requests: Sequence[PortRequest]
                       ) -> list[PortAllocation]:
        """All ingress ports of one service, all or nothing. The result replaces what the
        service held before (a changed spec frees the ports it no longer asks for); asking
        again with the same requests returns the same ports."""
        previous = {(p.protocol, p.target): p for p in self._ports_by_service.get(service, [])}
        mine = {(p.protocol, p.published) for p in previous.values()}
        result: list[PortAllocation] = []
        claimed: set[tuple[Protocol, int]] = set()
        lo, hi = self.port_range
        # Requested ports first, so a dynamic pick never takes a port asked for later in
        # the same list.
        for req in requests:
            if req.published is None:
                continue
            key = (req.protocol, req.published)
            if key in claimed:
                raise ConflictError(f"service {service!r} publishes port {req.published}/"
                                    f"{req.protocol} twice", service)
            held = self._ports.get(key)
            if held is not None and held.service != service:
                raise ConflictError(f"published port {req.published}/{req.protocol} is "
                                    f"already used by service {held.service!r}", held.service)
            claimed.add(key)
        for req in requests:
            if req.published is not None:
                result.append(PortAllocation(service, req.protocol, req.published, req.target))
                continue
            old = previous.get((req.protocol, req.target))
            if old is not None and (old.protocol, old.published) not in claimed:
                port: int | None = old.published  # keep a picked port across re-applies
            else:
                port = None
                for candidate in range(lo, hi + 1):
                    key = (req.protocol, candidate)
                    if key in claimed:
                        continue
                    held = self._ports.get(key)
                    if held is None or (key in mine and held.service == service):
                        port = candidate
                        break
            if port is None:
                raise ExhaustedError(f"no free {req.protocol} port left in {lo}-{hi} for "
                                     f"service {service!r}")
            claimed.add((req.protocol, port))
            result.append(PortAllocation(service, req.protocol, port, req.target))
        self.release_ports(service)
        for p in result:
            self.adopt_port(p)
        return result

    def release_ports(self, service: str) -> None:
        for p in self._ports_by_service.pop(service, []):
            self._ports.pop((p.protocol, p.published), None)

    def port_holder(self, protocol: Protocol, port: int) -> str | None:
        held = self._ports.get((protocol, port))
        return None if held is None else held.service

    def ports(self) -> list[PortAllocation]:
        return [p for ps in self._ports_by_service.values() for p in ps]
