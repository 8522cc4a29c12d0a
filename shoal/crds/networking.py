"""The allocation fields of Network, Service and Task: where they live and how to read them.

The allocator controller writes these fields, the agent's dataplane and ``swctl`` read
them; they are the whole contract between those three (neither imports the other), so
the shapes are defined once, here, next to the kinds' schemas:

* ``Network.status``: ``subnet`` ("10.0.1.0/24"), ``gateway``, ``vni``, ``vipRange`` (the
  network's block of off-link service VIPs; absent on the ingress network) and
  ``nodeAddresses`` ({node name: address}) -- each node hosting the network gets its own
  address on it: its tasks' gateway and DNS server, and the source of masqueraded
  load-balanced traffic. A condition ``Allocated`` says whether the spec could be met.
* ``Task.spec.networks``: ``[{name, addresses: ["10.0.1.5/24"]}]``, one entry per network
  of the task's service (and ``ingress`` when the service publishes ports), in the
  service's order, the ingress network last. It is in ``spec`` like ``nodeName``: an
  allocation decision made for the task, not something observed. Absent until allocated.
* ``Service.spec.networks`` (the user's, read here for every layer): each entry a
  network's name or ``{name, aliases}``; :func:`service_networks` gives the names,
  :func:`service_aliases` a network's aliases.
* ``Service.status.endpoint``: ``mode``, ``virtualIPs`` ``[{network, address}]`` (none for
  ``dnsrr``, none on ingress) and ``ports`` ``[{name?, protocol, target, published,
  mode}]`` with the published port chosen for ingress ports that asked for none.

Readers never raise on a malformed object: a field that cannot be read is treated as not
allocated (the allocator then allocates again, the agent waits), so one bad object can
stop neither loop. Pure functions of the objects; no I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from shoal.crds.resource import Resource

IPv4Address = ipaddress.IPv4Address
IPv4Interface = ipaddress.IPv4Interface
IPv4Network = ipaddress.IPv4Network

#: The routing-mesh network the allocator creates when no Network has ``spec.ingress``.
INGRESS_NETWORK: Final = "ingress"
#: Condition type the allocator sets on Networks, Services and Tasks it could not serve.
ALLOCATED: Final = "Allocated"
#: The block service VIPs come from (the allocator's default pool): no network's subnet
#: may overlap it, so ``swctl apply`` refuses such a network as the allocator would.
SERVICE_VIP_POOL: Final = "10.254.0.0/16"
#: Who holds the VIP pool, in a :class:`SubnetOverlap`.
VIP_POOL_HOLDER: Final = "<vip-pool>"

Protocol = Literal["tcp", "udp"]
PortMode = Literal["ingress", "host"]


@dataclasses.dataclass(frozen=True)
class NetworkInfo:
    """A Network as the dataplane needs it (from spec + the allocator's status)."""

    name: str
    subnet: IPv4Network
    gateway: IPv4Address
    vni: int
    vip_range: IPv4Network | None
    ingress: bool
    internal: bool
    node_addresses: Mapping[str, IPv4Address]


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One network of a task, with the task's address on it (prefix = the subnet's)."""

    network: str
    address: IPv4Interface


@dataclasses.dataclass(frozen=True)
class PublishedPort:
    protocol: Protocol
    target: int
    published: int | None  # None: ingress port not allocated yet, or host port unset
    mode: PortMode
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A Service's ``status.endpoint``."""

    mode: Literal["vip", "dnsrr"]
    vips: Mapping[str, IPv4Address]  # network -> VIP
    ports: tuple[PublishedPort, ...]


# --- Networks -----------------------------------------------------------------------------

def is_ingress(network: Resource) -> bool:
    return network.spec.get("ingress") is True


def ingress_name(networks: Iterable[Resource]) -> str | None:
    """The routing-mesh network: the oldest Network with ``spec.ingress``, ties (two made
    in the same second) broken by name. The allocator and every agent must pick the same
    one, so this is the only place the rule is written; both inputs are stable (the store
    stamps ``creationTimestamp`` once, always in the same format, so the strings sort as
    the times do), unlike a resourceVersion, which moves with every status write."""
    found = [n for n in networks if is_ingress(n)]
    if not found:
        return None
    return min(found, key=lambda n: (n.metadata.creationTimestamp or "", n.name)).name


def network_info(network: Resource) -> NetworkInfo | None:
    """The network's allocation, or None while (or if) it has none that can be read."""
    st = network.status
    try:
        subnet = ipaddress.IPv4Network(str(st["subnet"]))
        gateway = ipaddress.IPv4Address(str(st["gateway"]))
        vni = st["vni"]
        if not isinstance(vni, int) or isinstance(vni, bool) or not 0 < vni < 1 << 24:
            return None
        raw_range = st.get("vipRange")
        vip_range = ipaddress.IPv4Network(str(raw_range)) if raw_range else None
    except (KeyError, ValueError, TypeError):
        return None
    return NetworkInfo(name=network.name, subnet=subnet, gateway=gateway, vni=vni,
                       vip_range=vip_range, ingress=is_ingress(network),
                       internal=network.spec.get("internal") is True,
                       node_addresses=node_addresses(network))


def node_addresses(network: Resource) -> dict[str, IPv4Address]:
    raw = network.status.get("nodeAddresses")
    out: dict[str, IPv4Address] = {}
    if not isinstance(raw, dict):
        return out
    for node, text in raw.items():
        try:
            out[str(node)] = ipaddress.IPv4Address(str(text))
        except ValueError:
            continue
    return out


@dataclasses.dataclass(frozen=True)
class SubnetOverlap:
    """Why a subnet cannot be had: ``holder`` is the network (or ``<vip-pool>``) holding
    addresses it would share, ``message`` says so with both names and subnets."""

    holder: str
    message: str


def subnet_overlap(subnet: IPv4Network, name: str,
                   taken: Iterable[tuple[str, IPv4Network]],
                   vip_pool: IPv4Network) -> SubnetOverlap | None:
    """The rule every network's subnet obeys: it shares no address with another network's
    subnet (``taken``: (network, subnet) pairs, ``name``'s own entry skipped) nor with the
    service VIP pool. The first clash, or None. The allocator refuses to allocate such a
    subnet and ``swctl apply`` refuses to store it; both ask here, so they never disagree.
    """
    for other, held in taken:
        if other != name and subnet.overlaps(held):
            return SubnetOverlap(other, f"subnet {subnet} of network {name!r} overlaps "
                                        f"{held} of network {other!r}")
    if subnet.overlaps(vip_pool):
        return SubnetOverlap(VIP_POOL_HOLDER, f"subnet {subnet} of network {name!r} overlaps "
                                              f"the service VIP pool {vip_pool}")
    return None


def requested_subnet(network: Resource) -> IPv4Network | None:
    """``spec.subnet`` when one was asked for and can be read."""
    return _subnet(network.spec.get("subnet"))


def held_subnet(network: Resource) -> IPv4Network | None:
    """The subnet a network holds or will hold: the one it asked for, else the one the
    allocator gave it; None while neither is known."""
    return requested_subnet(network) or _subnet(network.status.get("subnet"))


def _subnet(raw: Any) -> IPv4Network | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return ipaddress.IPv4Network(raw)
    except ValueError:
        return None


# --- Driver options -----------------------------------------------------------------------

#: Docker's overlay option asking for IPsec between nodes.
ENCRYPTED_OPTION: Final = "encrypted"


def driver_option_refusal(key: str) -> str:
    """Why Shoal's overlay cannot honour the driver option ``key`` (Docker's name). It
    honours none yet; ``swctl network create`` refuses each with this reason and
    ``stack deploy`` refuses ``encrypted`` and warns about the rest, so both say the
    same."""
    if key == ENCRYPTED_OPTION:
        return ("Shoal does not encrypt overlay traffic yet (no IPsec in its overlay); "
                "without the option the network's VXLAN traffic is plain text")
    if key == "com.docker.network.driver.mtu":
        return ("the overlay MTU is derived from the underlay (50 bytes of VXLAN header "
                "less) and cannot be set yet")
    if key == "com.docker.network.driver.overlay.vxlanid_list":
        return "the allocator picks the VNI and cannot be told one yet"
    return f'unknown option "{key}" for the overlay driver (Shoal honours no driver options yet)'


# --- Tasks --------------------------------------------------------------------------------

def task_attachments(task: Resource) -> list[Attachment] | None:
    """The task's allocated networks; None when the allocator has not written them (or
    wrote something unreadable), [] for a task that has no network."""
    raw = task.spec.get("networks")
    if not isinstance(raw, list):
        return None
    out: list[Attachment] = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return None
        addresses = entry.get("addresses")
        if not isinstance(addresses, list) or not addresses:
            return None
        try:
            address = ipaddress.IPv4Interface(str(addresses[0]))
        except ValueError:
            return None
        out.append(Attachment(entry["name"], address))
    return out


def attachments_field(attachments: Iterable[Attachment]) -> list[dict[str, Any]]:
    """``spec.networks`` for these attachments."""
    return [{"name": a.network, "addresses": [str(a.address)]} for a in attachments]


# --- Services -----------------------------------------------------------------------------

def network_entry_name(item: Any) -> str | None:
    """The network an entry of ``spec.networks`` names: a bare name (``app``) or the
    ``name`` of ``{name, aliases}``; None for an entry that names none."""
    if isinstance(item, dict):
        item = item.get("name")
    return item if isinstance(item, str) and item else None


def network_entry_aliases(item: Any) -> list[str]:
    """The aliases an entry of ``spec.networks`` gives (none for a bare name)."""
    raw = item.get("aliases") if isinstance(item, dict) else None
    return [a for a in raw if isinstance(a, str) and a] if isinstance(raw, list) else []


def service_networks(service: Resource) -> list[str]:
    """Names in ``spec.networks``, first mention kept; entries that name no network are
    skipped (admission rejects them; a stored object may still hold anything)."""
    raw = service.spec.get("networks")
    out: list[str] = []
    if isinstance(raw, list):
        for item in raw:
            name = network_entry_name(item)
            if name is not None and name not in out:
                out.append(name)
    return out


def service_aliases(service: Resource, network: str) -> list[str]:
    """The extra DNS names ``service`` answers to on ``network`` (its ``aliases`` there),
    in the order given, each once; [] when it has none or is not on that network."""
    raw = service.spec.get("networks")
    out: list[str] = []
    for item in raw if isinstance(raw, list) else ():
        if network_entry_name(item) == network:
            out.extend(a for a in network_entry_aliases(item) if a not in out)
    return out


def endpoint_mode(service: Resource) -> Literal["vip", "dnsrr"]:
    endpoint = service.spec.get("endpoint")
    mode = endpoint.get("mode") if isinstance(endpoint, dict) else None
    return "dnsrr" if mode == "dnsrr" else "vip"


def spec_ports(service: Resource) -> list[PublishedPort]:
    """``spec.endpoint.ports`` as requested (published None where none was asked for)."""
    endpoint = service.spec.get("endpoint")
    raw = endpoint.get("ports") if isinstance(endpoint, dict) else None
    return _ports(raw)


def _ports(raw: Any) -> list[PublishedPort]:
    out: list[PublishedPort] = []
    if not isinstance(raw, list):
        return out
    for item in raw:
        if not isinstance(item, dict):
            continue
        target, published = item.get("target"), item.get("published")
        if not isinstance(target, int) or not _port_number(target) or (
                published is not None and not (isinstance(published, int)
                                               and _port_number(published))):
            continue
        protocol: Protocol = "udp" if item.get("protocol") == "udp" else "tcp"
        mode: PortMode = "host" if item.get("mode") == "host" else "ingress"
        out.append(PublishedPort(protocol, int(target),
                                 None if published is None else int(published), mode,
                                 str(item.get("name") or "")))
    return out


def _port_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def publishes(service: Resource) -> bool:
    """Whether the service's tasks join the ingress network: any published port does it
    (ingress ports are balanced through it; host ports reach the task through it too)."""
    return bool(spec_ports(service))


def task_network_names(service: Resource, ingress: str | None) -> list[str]:
    """The networks every task of ``service`` attaches to, in attachment order."""
    names = [n for n in service_networks(service) if n != ingress]
    if ingress is not None and publishes(service):
        names.append(ingress)
    return names


def endpoint(service: Resource) -> Endpoint:
    """``status.endpoint`` as the allocator wrote it (empty before)."""
    raw = service.status.get("endpoint")
    raw = raw if isinstance(raw, dict) else {}
    vips: dict[str, IPv4Address] = {}
    for item in raw.get("virtualIPs") or ():
        if not isinstance(item, dict):
            continue
        try:
            vips[str(item["network"])] = ipaddress.IPv4Address(str(item["address"]))
        except (KeyError, ValueError):
            continue
    mode: Literal["vip", "dnsrr"] = "dnsrr" if raw.get("mode") == "dnsrr" else "vip"
    return Endpoint(mode=mode, vips=vips, ports=tuple(_ports(raw.get("ports"))))


def endpoint_field(mode: str, vips: Mapping[str, IPv4Address],
                   ports: Iterable[PublishedPort]) -> dict[str, Any]:
    """``status.endpoint`` for these allocations (VIPs in the given order)."""
    out_ports = []
    for p in ports:
        entry: dict[str, Any] = {"protocol": p.protocol, "target": p.target, "mode": p.mode}
        if p.published is not None:
            entry["published"] = p.published
        if p.name:
            entry["name"] = p.name
        out_ports.append(entry)
    return {"mode": mode,
            "virtualIPs": [{"network": n, "address": str(a)} for n, a in vips.items()],
            "ports": out_ports}


def _claims(service: Resource, *, allocated: bool) -> list[tuple[int, PublishedPort]]:
    """(index in spec.endpoint.ports, port) of every port the service publishes; with
    ``allocated`` also the ports the allocator picked for it (index -1)."""
    out = [(i, p) for i, p in enumerate(spec_ports(service)) if p.published is not None]
    if allocated:
        out += [(-1, p) for p in endpoint(service).ports if p.published is not None]
    return out


def port_conflicts(incoming: Iterable[Resource], live: Iterable[Resource]
                   ) -> list[tuple[Resource, int, str]]:
    """Published ports of ``incoming`` services already held by another service.

    A port is held cluster-wide per protocol when either holder publishes it in ingress
    mode (the mesh answers it on every node); two host-mode services may share a port
    (the scheduler keeps them on different nodes). ``live`` are the stored services; an
    incoming service replaces its own live version, and incoming services are checked
    against each other too. Returns (service, port index, message) per conflict.
    """
    key = _service_ref
    news = list(incoming)
    holders = {key(s): s for s in live}
    holders.update((key(s), s) for s in news)
    incoming_ids = {id(s) for s in news}
    held: dict[tuple[int, str], list[tuple[str, PortMode]]] = {}
    for ref, svc in holders.items():
        # A stored service also holds the ports the allocator picked for it.
        for _i, p in _claims(svc, allocated=id(svc) not in incoming_ids):
            held.setdefault((p.published or 0, p.protocol), []).append((ref, p.mode))
    out: list[tuple[Resource, int, str]] = []
    for svc in news:
        mine = key(svc)
        for index, p in _claims(svc, allocated=False):
            for ref, mode in held.get((p.published or 0, p.protocol), ()):
                if ref != mine and "ingress" in (mode, p.mode):
                    out.append((svc, index, f"port {p.published}/{p.protocol} is already "
                                            f"published by service {ref}"))
                    break
    return out


def _service_ref(service: Resource) -> str:
    return f"{service.metadata.namespace or 'default'}/{service.name}"
