"""The VXLAN overlay on one node, reconciled from a desired :class:`NetworkState`.

Owns, in the node's network namespace: per network a bridge ``shb-<vni>`` carrying the
node's own address, a VXLAN device ``shv-<vni>`` enslaved to it, the static FDB and
neighbour entries for every remote endpoint, and a veth per local task; and, in each task's
namespace, the container end of that veth with its address, MAC, MTU and routes.

Why it looks like this:

* No multicast and no learning: the cluster already knows where every address lives (etcd),
  so each remote endpoint is programmed statically -- FDB ``MAC -> remote VTEP`` and
  neighbour ``IP -> MAC`` on the VXLAN device, which answers the tasks' ARP requests itself
  (``proxy``). Nothing is flooded, and a VIP (off-link, see the allocator's ipam.py) is
  never asked for.
* MACs are derived from addresses (naming.mac_for), so a node programs remote endpoints from
  the addresses alone.
* Offloads: the bridge, the VXLAN device and the host ends of the veths are given back
  the segmentation/checksum offloads a stream's throughput rests on when something
  turned them off (offloads.py: one ioctl thread per network, on thorough passes and for
  links a pass created or looked at again, trusted in between like task ends). MTUs
  avoid fragmentation: the VXLAN device, the bridge and both veth ends carry the
  underlay MTU minus the 50 bytes of encapsulation.
* ``sync`` is level-triggered: it reads what the kernel has, changes only what differs and
  removes Shoal-named links that are no longer wanted. A restarted agent that calls it with
  the same state changes nothing; the returned report lists every change made.
* Looking into a task's namespace costs a namespace socket and four netlink requests, and
  a pass looked into every local task's: ~1 s a pass with 50 tasks on 2 busy cores, paid
  by every task start and every stop (each runs a pass), which made a 50-replica rolling
  update spend most of its time here. So ``sync(thorough=False)`` trusts a task end this
  node verified in an earlier pass with the same attachment, as long as the host end
  still exists, is a veth, and is enslaved to the network's bridge (read from the one
  link dump every pass makes; a task whose namespace died takes its veth with it, so a
  dead task is never trusted). A thorough pass (the agent's start-up and periodic ones)
  looks into every namespace again and repairs drift inside tasks.
* A change to one network need not look at the others: ``sync_networks`` syncs the
  networks it is given (their devices, FDB and neighbours read per VXLAN device, their
  veths got by name), and ``update_network`` applies a known difference -- some peers
  added or removed, some attachments -- with a few netlink requests and no dump, so one
  task starting elsewhere in a 100,000-task cluster costs an FDB and a neighbour entry.
  Both trust what earlier passes made; ``sync`` (the agent's start-up and periodic pass)
  compares the whole node with the kernel and removes what nobody wants.
* A hosted network's FDB and neighbour tables hold an entry per remote task. A full sync
  reads them with ``bridge -j fdb``/``ip -j neigh`` (pyroute2 took 18 s to decode the
  20,000 entries of 10,000 remote tasks) and adds what is missing with one
  ``bridge -batch``/``ip -batch`` when it is more than a few.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.net import naming, offloads
from shoal.net import netns as netns_mod

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
IFF_UP = 0x1
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTPROT_KERNEL = 2
RTPROT_STATIC = 4
RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
AF_BRIDGE = 7
# Beyond this many FDB or neighbour entries to add, one ``bridge -batch``/``ip -batch``
# process is cheaper than a netlink request each through pyroute2.
BATCH = 64

Msg = Any  # a pyroute2 netlink message (untyped)


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote endpoint on a network: a task's or a node's own address, and the underlay
    address of the node (VTEP) where it lives. Slotted: an agent holds one per remote
    task of the networks it hosts (100,000 at the scale bench/dataplane_agent.py runs)."""

    address: ipaddress.IPv4Address
    underlay: ipaddress.IPv4Address


@dataclass(frozen=True)
class Attachment:
    """A local task on a network. ``key`` identifies the task (it names the host end of
    the veth); ``netns`` is a path (/proc/PID/ns/net, /var/run/netns/NAME) or a netns name."""

    key: str
    netns: str
    ifname: str
    address: ipaddress.IPv4Interface
    default_route: bool = True


@dataclass(frozen=True)
class OverlayNetwork:
    name: str
    vni: int
    subnet: ipaddress.IPv4Network
    node_address: ipaddress.IPv4Address  # this node's own address: gateway + DNS
    vip_range: ipaddress.IPv4Network | None = None
    internal: bool = False  # no default route out through this network
    attachments: tuple[Attachment, ...] = ()
    peers: tuple[Peer, ...] = ()


@dataclass(frozen=True)
class NetworkState:
    """Everything that should exist on this node; what is not in it is removed."""

    networks: tuple[OverlayNetwork, ...] = ()


@dataclass
class SyncReport:
    changes: list[str] = field(default_factory=list)
    #: Networks not built, by name, and why (a subnet the host itself uses).
    refused: dict[str, str] = field(default_factory=dict)
    #: What could not be made as wanted but does not stop traffic (an offload feature a
    #: device refused); not a change, so it does not make the report true.
    warnings: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.changes.append(what)

    def __bool__(self) -> bool:
        return bool(self.changes)




class SubnetConflictError(RuntimeError):
    """An overlay subnet that would capture traffic the host needs (its nameserver, its
    gateway, a network it is on): the overlay refuses to build it rather than cut the
    host off, as a connected route for the subnet would."""


def resolv_nameservers(path: str = "/etc/resolv.conf") -> list[ipaddress.IPv4Address]:
    """The IPv4 nameservers the host resolves names with (none when unreadable)."""
    found: list[ipaddress.IPv4Address] = []
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.IPv4Address(parts[1]))
    return found


async def host_conflict(ipr: AsyncIPRoute, subnet: ipaddress.IPv4Network) -> str | None:
    """What of this namespace's own networking ``subnet`` would capture, or None: a
    route (not the default, not on a Shoal link), the default gateway, or a nameserver."""
    names = {link["index"]: link.get_attr("IFLA_IFNAME") async for link in
             await ipr.link("dump")}
    async for r in await ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
        dev = names.get(r.get("oif"), "")
        if naming.is_ours(dev or ""):
            continue
        if r["dst_len"] == 0:
            gateway = r.get("gateway")
            if gateway and ipaddress.IPv4Address(gateway) in subnet:
                return f"default gateway {gateway} (dev {dev})"
            continue
        dst = ipaddress.IPv4Network(f"{r.get('dst')}/{r['dst_len']}", strict=False)
        if dst.overlaps(subnet):
            return f"route {dst} (dev {dev})"
    for server in resolv_nameservers():
        if server in subnet:
            return f"nameserver {server} (/etc/resolv.conf)"
    return None


def _kind(link: Msg) -> str | None:
    kind: str | None = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return kind


def _vxlan_data(link: Msg) -> dict[str, Any]:
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if data is None:
        return {}
    return {k: v for k, v in data.get("attrs", [])}


class OverlayNode:
    """The overlay dataplane of one node. ``netns`` is the node's namespace (None: the
    current one -- the normal case for an agent running on the host)."""

    def __init__(
        self,
        underlay_ip: str | ipaddress.IPv4Address,
        *,
        netns: str | None = None,
        underlay_mtu: int | None = None,
        vxlan_port: int = VXLAN_PORT,
    ) -> None:
        self.underlay_ip = ipaddress.IPv4Address(underlay_ip)
        self.netns = netns
        self.vxlan_port = vxlan_port
        self._underlay_mtu = underlay_mtu
        self._forwarding_checked = False
        # (network, attachment key) -> (attachment, mtu) whose task end a pass verified.
        self._verified: dict[tuple[str, str], tuple[Attachment, int]] = {}
        # (link name, ifindex) of bridges and VXLAN devices whose offloads a pass checked;
        # trusted like verified task ends until the next thorough pass (a replaced device
        # has a new index and is checked at once).
        self._offloads_checked: set[tuple[str, int]] = set()

    # ---- entry points --------------------------------------------------------------------

    async def sync(self, desired: NetworkState, *, thorough: bool = True) -> SyncReport:
        """Make the node hold ``desired``. ``thorough=False`` skips looking into the
        namespaces of tasks verified by an earlier pass (see the module docstring)."""
        report = SyncReport()
        if thorough:
            self._verified.clear()
            self._offloads_checked.clear()
        if desired.networks:
            # Only a node that hosts a network forwards for it; an agent with nothing to
            # host leaves the namespace's sysctls alone.
            await self._ensure_forwarding(report)
        async with self._node() as ipr:
            mtu = await self.overlay_mtu(ipr)
            links = {link.get("ifname"): link async for link in await ipr.link("dump")}
            await self._remove_stale_links(ipr, desired, links, report)
            wanted = {(n.name, a.key) for n in desired.networks for a in n.attachments}
            for gone in set(self._verified) - wanted:
                del self._verified[gone]
            for net in desired.networks:
                try:
                    await self._sync_network(ipr, net, mtu, links, report)
                except SubnetConflictError as exc:
                    report.refused[net.name] = str(exc)
        return report

    async def sync_networks(self, networks: Sequence[OverlayNetwork], *,
                            gone: Iterable[tuple[str, str]] = ()) -> SyncReport:
        """Make the node hold these networks as given (peers included), touching no
        other network: no dump of every link, only the links these networks name.
        ``gone`` are (network, attachment key) pairs whose veths are removed (tasks that
        left these networks). Attachments verified earlier are trusted as in
        ``sync(thorough=False)``."""
        report = SyncReport()
        if networks:
            await self._ensure_forwarding(report)
        async with self._node() as ipr:
            mtu = await self.overlay_mtu(ipr)
            for network, key in gone:
                await self._delete_veth(ipr, network, key, report)
            for net in networks:
                names = [naming.veth_name(a.key, net.name) for a in net.attachments]
                links = {name: link for name in names
                         if (link := await self._link(ipr, name)) is not None}
                try:
                    await self._sync_network(ipr, net, mtu, links, report)
                except SubnetConflictError as exc:
                    report.refused[net.name] = str(exc)
        return report

    async def update_network(self, old: OverlayNetwork, new: OverlayNetwork, *,
                             added: Iterable[Peer] = (), removed: Iterable[Peer] = ()
                             ) -> SyncReport:
        """Change a network this node already holds (``old``, same parameters as ``new``)
        by exactly these peers and the attachments that differ: a handful of netlink
        requests, no dump. A device found missing raises: the caller falls back to a
        full sync, which rebuilds it."""
        report = SyncReport()
        async with self._node() as ipr:
            vx = (await self._must_link(ipr, naming.vxlan_name(new.vni)))["index"]
            for peer in removed:
                mac = naming.mac_for(peer.address)
                with contextlib.suppress(NetlinkError):  # already gone
                    await ipr.fdb("del", ifindex=vx, lladdr=mac, dst=str(peer.underlay))
                with contextlib.suppress(NetlinkError):
                    await ipr.neigh("del", ifindex=vx, dst=str(peer.address), lladdr=mac)
                report.add(f"fdb del {mac} dst {peer.underlay} on vni {new.vni}")
            for peer in added:
                mac = naming.mac_for(peer.address)
                with contextlib.suppress(NetlinkError):  # EEXIST: there already
                    await ipr.fdb("append", ifindex=vx, lladdr=mac, dst=str(peer.underlay),
                                  state=NUD_PERMANENT)
                await ipr.neigh("replace", ifindex=vx, dst=str(peer.address), lladdr=mac,
                                state=NUD_PERMANENT)
                report.add(f"fdb add {mac} dst {peer.underlay} on vni {new.vni}")
            before = {a.key: a for a in old.attachments}
            after = {a.key: a for a in new.attachments}
            for key in before.keys() - after.keys():
                await self._delete_veth(ipr, new.name, key, report)
            changed = [a for k, a in after.items() if before.get(k) != a]
            if changed:
                mtu = await self.overlay_mtu(ipr)
                br = (await self._must_link(ipr, naming.bridge_name(new.vni)))["index"]
                for att in changed:
                    self._verified.pop((new.name, att.key), None)
                    await self._sync_attachment(ipr, new, att, br, mtu, report)
                    self._verified[(new.name, att.key)] = (att, mtu)
        return report

    async def remove_network(self, net: OverlayNetwork) -> SyncReport:
        """Take one network off this node: its task veths, VXLAN and bridge."""
        report = SyncReport()
        async with self._node() as ipr:
            for att in net.attachments:
                await self._delete_veth(ipr, net.name, att.key, report)
            for name in (naming.vxlan_name(net.vni), naming.bridge_name(net.vni)):
                link = await self._link(ipr, name)
                if link is not None:
                    with contextlib.suppress(NetlinkError):
                        await ipr.link("del", index=link["index"])
                    report.add(f"deleted link {name}")
        for key in [k for k in self._verified if k[0] == net.name]:
            del self._verified[key]
        return report

    async def _delete_veth(self, ipr: AsyncIPRoute, network: str, key: str,
                           report: SyncReport) -> None:
        self._verified.pop((network, key), None)
        name = naming.veth_name(key, network)
        link = await self._link(ipr, name)
        if link is not None:
            with contextlib.suppress(NetlinkError):  # it may vanish with its netns
                await ipr.link("del", index=link["index"])
            report.add(f"deleted veth {name}")

    async def teardown(self) -> SyncReport:
        """Remove every Shoal link from this node (and so every task end with it)."""
        return await self.sync(NetworkState())

    async def overlay_mtu(self, ipr: AsyncIPRoute | None = None) -> int:
        """Underlay MTU minus the VXLAN overhead; the underlay MTU is that of the device
        holding the underlay address unless given."""
        if self._underlay_mtu is None:
            if ipr is None:
                async with self._node() as own:
                    return await self.overlay_mtu(own)
            self._underlay_mtu = await self._detect_underlay_mtu(ipr)
        return self._underlay_mtu - VXLAN_OVERHEAD

    # ---- node side -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _node(self) -> AsyncIterator[AsyncIPRoute]:
        if self.netns is None:
            async with AsyncIPRoute() as ipr:
                yield ipr
        else:
            async with rtnl_in(self.netns) as ipr:
                yield ipr

    async def _detect_underlay_mtu(self, ipr: AsyncIPRoute) -> int:
        async for addr in await ipr.addr("dump", family=socket.AF_INET):
            if addr.get("address") == str(self.underlay_ip):
                link = (await ipr.link("get", index=addr["index"]))[0]
                mtu: int = link.get("mtu")
                return mtu
        raise RuntimeError(f"no interface holds the underlay address {self.underlay_ip}"
                           + (f" in netns {self.netns}" if self.netns else ""))

    async def _ensure_forwarding(self, report: SyncReport) -> None:
        """VIP traffic is DNATed and routed back out of the bridge, so the node forwards."""
        if self._forwarding_checked:
            return
        if await netns_mod.set_sysctl(self.netns, "net/ipv4/ip_forward", "1"):
            report.add("set net.ipv4.ip_forward=1"
                       + (f" in {self.netns}" if self.netns is not None else ""))
        self._forwarding_checked = True

    async def _remove_stale_links(self, ipr: AsyncIPRoute, desired: NetworkState,
                                  links: dict[str, Msg], report: SyncReport) -> None:
        wanted: set[str] = set()
        for net in desired.networks:
            wanted.add(naming.bridge_name(net.vni))
            wanted.add(naming.vxlan_name(net.vni))
            wanted.update(naming.veth_name(a.key, net.name) for a in net.attachments)
        # veths first (their task ends go with them), then VXLANs, then the bridges.
        stale = sorted((n for n in links if naming.is_ours(n) and n not in wanted),
                       key=lambda n: (not n.startswith(naming.VETH_PREFIX),
                                      n.startswith(naming.BRIDGE_PREFIX), n))
        for name in stale:
            with contextlib.suppress(NetlinkError):  # a veth may vanish with its netns
                await ipr.link("del", index=links[name]["index"])
            report.add(f"deleted stale link {name}")
            del links[name]

    async def _sync_network(self, ipr: AsyncIPRoute, net: OverlayNetwork, mtu: int,
                            links: dict[str, Msg], report: SyncReport) -> None:
        if await self._link(ipr, naming.bridge_name(net.vni)) is None:
            # Only before the bridge exists: afterwards its own connected route is the
            # overlap, and a conflict found then was refused before.
            clash = await host_conflict(ipr, net.subnet)
            if clash is not None:
                raise SubnetConflictError(
                    f"network {net.name} ({net.subnet}) overlaps this host's {clash}: "
                    "building it would take that traffic off the host's own network; give "
                    "the network a subnet this host does not use (spec.subnet)")
        br = await self._ensure_bridge(ipr, net, mtu, report)
        vx = await self._ensure_vxlan(ipr, net, br, mtu, report)
        await self._sync_fdb(ipr, net, vx, report)
        await self._sync_neigh(ipr, net, vx, report)
        await self._sync_node_routes(ipr, net, br, report)
        # Offloads (offloads.py says why) of the bridge and VXLAN device unless checked
        # since the last thorough pass, and of the host ends of the veths this pass did
        # not trust unseen: a quick pass on a settled node enters no namespace for them.
        offload_links: list[tuple[str, str | None]] = []
        for name, kind, index in ((naming.bridge_name(net.vni), "bridge", br),
                                  (naming.vxlan_name(net.vni), "vxlan", vx)):
            if (name, index) not in self._offloads_checked:
                offload_links.append((name, kind))
                self._offloads_checked.add((name, index))
        for att in net.attachments:
            if self._still_verified(net, att, br, mtu, links):
                continue
            self._verified.pop((net.name, att.key), None)
            await self._sync_attachment(ipr, net, att, br, mtu, report)
            self._verified[(net.name, att.key)] = (att, mtu)
            offload_links.append((naming.veth_name(att.key, net.name), "veth"))
        done = await offloads.ensure(self.netns, offload_links)
        report.changes += done.changes
        report.warnings += done.problems

    def _still_verified(self, net: OverlayNetwork, att: Attachment, br: int, mtu: int,
                        links: dict[str, Msg]) -> bool:
        """A task end verified earlier with this very attachment, whose host end the
        pass's link dump still shows as a veth on the network's bridge."""
        if self._verified.get((net.name, att.key)) != (att, mtu):
            return False
        link = links.get(naming.veth_name(att.key, net.name))
        return (link is not None and _kind(link) == "veth" and link.get("master") == br
                and link.get("mtu") == mtu and bool(link["flags"] & IFF_UP))

    async def _must_link(self, ipr: AsyncIPRoute, name: str) -> Msg:
        link = await self._link(ipr, name)
        if link is None:
            raise RuntimeError(f"link {name} vanished right after it was created")
        return link

    async def _link(self, ipr: AsyncIPRoute, name: str) -> Msg | None:
        try:
            return (await ipr.link("get", ifname=name))[0]
        except NetlinkError as exc:
            if exc.code == 19:  # ENODEV
                return None
            raise

    async def _ensure_bridge(self, ipr: AsyncIPRoute, net: OverlayNetwork, mtu: int,
                             report: SyncReport) -> int:
        name = naming.bridge_name(net.vni)
        mac = naming.mac_for(net.node_address)
        link = await self._link(ipr, name)
        if link is not None and _kind(link) != "bridge":
            await ipr.link("del", index=link["index"])
            report.add(f"deleted {name}: not a bridge")
            link = None
        if link is None:
            # The bridge's MAC is the node address's derived MAC, so remote nodes can
            # program the node's own address like any other endpoint.
            await ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu)
            report.add(f"created bridge {name}")
            link = await self._must_link(ipr, name)
        index: int = link["index"]
        await self._fix_link(ipr, link, name, mtu, mac, report)
        await self._sync_addresses(ipr, index, name, [ipaddress.IPv4Interface(
            (net.node_address, net.subnet.prefixlen))], report)
        return index

    async def _ensure_vxlan(self, ipr: AsyncIPRoute, net: OverlayNetwork, bridge: int,
                            mtu: int, report: SyncReport) -> int:
        name = naming.vxlan_name(net.vni)
        want = {"IFLA_VXLAN_ID": net.vni, "IFLA_VXLAN_LOCAL": str(self.underlay_ip),
                "IFLA_VXLAN_PORT": self.vxlan_port, "IFLA_VXLAN_LEARNING": 0,
                "IFLA_VXLAN_PROXY": 1}
        link = await self._link(ipr, name)
        if link is not None:
            data = _vxlan_data(link)
            if _kind(link) != "vxlan" or any(data.get(k) != v for k, v in want.items()):
                # VXLAN parameters cannot be changed in place: replace the device.
                await ipr.link("del", index=link["index"])
                report.add(f"deleted {name}: parameters differ")
                link = None
        if link is None:
            await ipr.link("add", ifname=name, kind="vxlan", vxlan_id=net.vni,
                           vxlan_local=str(self.underlay_ip), vxlan_port=self.vxlan_port,
                           vxlan_learning=0, vxlan_proxy=1, mtu=mtu)
            report.add(f"created vxlan {name} vni {net.vni}")
            link = await self._must_link(ipr, name)
        if link.get("master") != bridge:
            await ipr.link("set", index=link["index"], master=bridge)
            report.add(f"enslaved {name} to {naming.bridge_name(net.vni)}")
        await self._fix_link(ipr, link, name, mtu, None, report)
        index: int = link["index"]
        return index

    async def _fix_link(self, ipr: AsyncIPRoute, link: Msg, name: str, mtu: int,
                        mac: str | None, report: SyncReport) -> None:
        changes: dict[str, Any] = {}
        if link.get("mtu") != mtu:
            changes["mtu"] = mtu
        if mac is not None and link.get("address") != mac:
            changes["address"] = mac
        if changes:
            await ipr.link("set", index=link["index"], **changes)
            report.add(f"set {name} {changes}")
        if not link["flags"] & IFF_UP:
            await ipr.link("set", index=link["index"], state="up")
            report.add(f"set {name} up")

    async def _sync_addresses(self, ipr: AsyncIPRoute, index: int, name: str,
                              want: list[ipaddress.IPv4Interface], report: SyncReport) -> None:
        have: set[ipaddress.IPv4Interface] = set()
        async for addr in await ipr.addr("dump", family=socket.AF_INET, index=index):
            if addr["index"] == index:
                have.add(ipaddress.IPv4Interface((addr.get("address"), addr["prefixlen"])))
        for extra in have - set(want):
            await ipr.addr("del", index=index, address=str(extra.ip),
                           prefixlen=extra.network.prefixlen)
            report.add(f"removed {extra} from {name}")
        for missing in set(want) - have:
            await ipr.addr("add", index=index, address=str(missing.ip),
                           prefixlen=missing.network.prefixlen)
            report.add(f"added {missing} to {name}")

    async def _sync_fdb(self, ipr: AsyncIPRoute, net: OverlayNetwork, vx: int,
                        report: SyncReport) -> None:
        dev = naming.vxlan_name(net.vni)
        want = {naming.mac_for(p.address): str(p.underlay) for p in net.peers}
        have: dict[str, set[str]] = {}
        for entry in await self._tool_json("bridge", "-j", "fdb", "show", "dev", dev):
            dst, mac = entry.get("dst"), entry.get("mac")
            if dst is None or mac is None or entry.get("master"):
                continue  # bridge (master) entries and the all-zero default are not ours
            have.setdefault(mac, set()).add(dst)
        for mac, dsts in have.items():
            for dst in dsts:
                if want.get(mac) != dst:
                    await ipr.fdb("del", ifindex=vx, lladdr=mac, dst=dst)
                    report.add(f"fdb del {mac} dst {dst} on vni {net.vni}")
        missing = [(mac, dst) for mac, dst in want.items() if dst not in have.get(mac, set())]
        if len(missing) > BATCH:
            # append: a VXLAN FDB entry keyed by MAC + dst; the stale one went above.
            await netns_mod.run_command(self.netns, "bridge", "-batch", "-", stdin="".join(
                f"fdb append {mac} dev {dev} dst {dst} self permanent\n"
                for mac, dst in missing))
        else:
            for mac, dst in missing:
                await ipr.fdb("append", ifindex=vx, lladdr=mac, dst=dst,
                              state=NUD_PERMANENT)
        for mac, dst in missing:
            report.add(f"fdb add {mac} dst {dst} on vni {net.vni}")

    async def _sync_neigh(self, ipr: AsyncIPRoute, net: OverlayNetwork, vx: int,
                          report: SyncReport) -> None:
        dev = naming.vxlan_name(net.vni)
        want = {str(p.address): naming.mac_for(p.address) for p in net.peers}
        have: dict[str, tuple[str | None, bool]] = {}
        for entry in await self._tool_json("ip", "-4", "-j", "neigh", "show", "dev", dev):
            if "dst" in entry:
                have[entry["dst"]] = (entry.get("lladdr"),
                                      entry.get("state") == ["PERMANENT"])
        for ip, (mac, _state) in have.items():
            if ip not in want:
                with contextlib.suppress(NetlinkError):
                    await ipr.neigh("del", ifindex=vx, dst=ip, lladdr=mac)
                report.add(f"neigh del {ip} on vni {net.vni}")
        missing = [(ip, mac) for ip, mac in want.items() if have.get(ip) != (mac, True)]
        if len(missing) > BATCH:
            await netns_mod.run_command(self.netns, "ip", "-batch", "-", stdin="".join(
                f"neigh replace {ip} lladdr {mac} dev {dev} nud permanent\n"
                for ip, mac in missing))
        else:
            for ip, mac in missing:
                await ipr.neigh("replace", ifindex=vx, dst=ip, lladdr=mac,
                                state=NUD_PERMANENT)
        for ip, mac in missing:
            report.add(f"neigh set {ip} {mac} on vni {net.vni}")

    async def _tool_json(self, *argv: str) -> list[dict[str, Any]]:
        """An iproute2 listing as JSON. The FDB and neighbour tables of a network hold an
        entry per remote task (100,000 in a big cluster): pyroute2 decodes ~1,000 netlink
        messages a second here, ``bridge -j``/``ip -j`` and a JSON parse 100 times that."""
        out = await netns_mod.run_command(self.netns, *argv)
        parsed = json.loads(out) if out.strip() else []
        return parsed if isinstance(parsed, list) else []

    async def _sync_node_routes(self, ipr: AsyncIPRoute, net: OverlayNetwork, br: int,
                                report: SyncReport) -> None:
        """The VIP block is routed onto the bridge with the node's address as source: only
        locally originated connections need it (forwarded ones are DNATed before routing)."""
        want = set() if net.vip_range is None else {str(net.vip_range)}
        have: set[str] = set()
        async for r in await ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
            if (r.get("oif") == br and r["proto"] == RTPROT_STATIC
                    and r.get("table") == RT_TABLE_MAIN):
                dst = f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}"
                if dst in want and r.get("prefsrc") == str(net.node_address):
                    have.add(dst)
                else:
                    await ipr.route("del", dst=dst, oif=br, table=RT_TABLE_MAIN)
                    report.add(f"route del {dst} dev {naming.bridge_name(net.vni)}")
        for dst in want - have:
            await ipr.route("replace", dst=dst, oif=br, scope=RT_SCOPE_LINK,
                            prefsrc=str(net.node_address), proto=RTPROT_STATIC)
            report.add(f"route {dst} dev {naming.bridge_name(net.vni)}")

    # ---- task side -----------------------------------------------------------------------

    async def _sync_attachment(self, ipr: AsyncIPRoute, net: OverlayNetwork, att: Attachment,
                               br: int, mtu: int, report: SyncReport) -> None:
        host = naming.veth_name(att.key, net.name)
        path = netns_mod.path(att.netns)
        mac = naming.mac_for(att.address.ip)
        link = await self._link(ipr, host)
        async with rtnl_in(path) as task:
            inner = await self._link(task, att.ifname)
            if link is not None and (inner is None or _kind(link) != "veth"
                                     or inner.get("link") is None):
                # Half of a pair we cannot account for: start this attachment afresh.
                await ipr.link("del", index=link["index"])
                report.add(f"deleted {host}: its task end {att.ifname} is missing")
                link = None
                inner = await self._link(task, att.ifname)
            if link is None:
                if inner is not None:
                    await task.link("del", index=inner["index"])
                    report.add(f"deleted stale {att.ifname} in {att.netns}")
                await ipr.link("add", ifname=host, kind="veth", mtu=mtu,
                               peer={"ifname": att.ifname, "net_ns_fd": path,
                                     "address": mac, "mtu": mtu})
                report.add(f"created veth {host} -> {att.netns}:{att.ifname}")
                link = await self._must_link(ipr, host)
                inner = await self._must_link(task, att.ifname)
            if link.get("master") != br:
                await ipr.link("set", index=link["index"], master=br)
                report.add(f"enslaved {host} to {naming.bridge_name(net.vni)}")
            await self._fix_link(ipr, link, host, mtu, None, report)
            await self._sync_task_side(task, net, att, inner, mtu, mac, report)

    async def _sync_task_side(self, task: AsyncIPRoute, net: OverlayNetwork, att: Attachment,
                              inner: Msg, mtu: int, mac: str, report: SyncReport) -> None:
        where = f"{att.netns}:{att.ifname}"
        lo = await self._link(task, "lo")
        if lo is not None and not lo["flags"] & IFF_UP:
            await task.link("set", index=lo["index"], state="up")
            report.add(f"set lo up in {att.netns}")
        await self._fix_link(task, inner, where, mtu, mac, report)
        index: int = inner["index"]
        await self._sync_addresses(task, index, where, [att.address], report)
        gw = str(net.node_address)
        want: dict[str, str] = {}
        if att.default_route and not net.internal:
            want["0.0.0.0/0"] = gw
        if net.vip_range is not None:
            # VIPs are off-link: reach them through the node, never by ARP on the overlay.
            want[str(net.vip_range)] = gw
        have: dict[str, str | None] = {}
        async for r in await task.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
            if r.get("oif") != index or r["proto"] == RTPROT_KERNEL:
                continue
            if r.get("table") != RT_TABLE_MAIN:
                continue
            dst = f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}"
            have[dst] = r.get("gateway")
        for dst, via in have.items():
            if want.get(dst) != via:
                await task.route("del", dst=dst, oif=index, table=RT_TABLE_MAIN)
                report.add(f"route del {dst} in {att.netns}")
        for dst, via in want.items():
            if have.get(dst) != via:
                await task.route("replace", dst=dst, gateway=via, oif=index,
                                 proto=RTPROT_STATIC)
                report.add(f"route {dst} via {via} in {where}")


@contextlib.asynccontextmanager
async def rtnl_in(netns: str) -> AsyncIterator[AsyncIPRoute]:
    """``AsyncIPRoute`` in the namespace ``netns`` (a name or path) on a socket a thread
    made there, not a forked child (``netns.rtnl_socket`` says why)."""
    sock = await netns_mod.rtnl_socket(netns)
    try:
        async with AsyncIPRoute(use_socket=sock) as ipr:
            yield ipr
    finally:
        sock.close()


def peers_from(endpoints: Iterable[tuple[str, str]]) -> tuple[Peer, ...]:
    """Convenience for callers holding (address, underlay) string pairs."""
    return tuple(Peer(ipaddress.IPv4Address(a), ipaddress.IPv4Address(u))
                 for a, u in endpoints)


__all__ = ["Attachment", "NetworkState", "OverlayNetwork", "OverlayNode", "Peer",
           "SyncReport", "peers_from"]
