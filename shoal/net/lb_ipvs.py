"""Service load balancing with IPVS, through pyroute2's generic-netlink IPVS API.

Used where the kernel has IPVS (``lb.detect_backend``). Layout, like Swarm's and
kube-proxy's IPVS modes:

* a VIP service is an IPVS virtual service ``VIP:port/proto`` (scheduler ``rr``) whose real
  servers are the backends, forwarded by **masquerading** (``fwd_method=0``: pyroute2's
  IPVSDest defaults to 3, direct routing, which would need the backends to own the VIP);
* IPVS only sees packets addressed to a local address, so each VIP is added as a /32 to a
  dummy device ``shoal-ipvs0``. VIPs are off-link (ipam.py): no host ever ARPs for them,
  so the local address is never announced on an overlay;
* a published ingress port (vip None) is a firewall-mark service: a tiny nftables table
  ``ip shoal_ipvs`` marks packets to a local address on that port with the service's mark;
* replies must come back through this node, so VIP traffic is marked and masqueraded in
  that same nftables table, which needs ``net.ipv4.vs.conntrack=1`` (IPVS then keeps
  conntrack entries that nftables NAT can act on).

Ownership after a restart: a VIP service is Shoal's when its address is on the dummy
device; a fwmark service when its mark carries :data:`FWMARK_BASE`. Nothing else in the
IPVS table is touched.

This kernel-facing part is exercised under user-mode-linux; the message construction
(``service_fields``, ``dest_fields``) is pure and unit-tested.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from shoal.net.lb import (
    Backend,
    BackendName,
    LoadBalancer,
    Protocol,
    ServiceKey,
    VirtualService,
    protocol_number,
)
from shoal.net.nft import NftRunner

DUMMY = "shoal-ipvs0"
SCHEDULER = "rr"
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ; pyroute2's IPVSDest default 3 is direct routing
MASQ_MARK = 0x10000000
# Firewall marks of published-port services: MASQ_MARK | proto bit | port, so the mark
# also asks for masquerading and can never collide with another service's.
FWMARK_BASE = MASQ_MARK
FWMARK_UDP = 0x00010000
NFT_TABLE = "ip shoal_ipvs"


def fwmark_for(protocol: Protocol, port: int) -> int:
    return FWMARK_BASE | (FWMARK_UDP if protocol == "udp" else 0) | port


def service_fields(svc: VirtualService | ServiceKey) -> dict[str, Any]:
    """IPVSService keyword arguments for a virtual service (or its key)."""
    vip, port, proto = svc.key if isinstance(svc, VirtualService) else svc
    if vip is None:
        # The kernel requires a netmask on every new service; pyroute2 only adds one
        # when an address is given, so a fwmark service must carry it explicitly.
        return {"fwmark": fwmark_for(proto, port), "af": socket.AF_INET,
                "netmask": "255.255.255.255", "sched_name": SCHEDULER}
    return {"addr": str(vip), "port": port, "protocol": protocol_number(proto),
            "sched_name": SCHEDULER}


def dest_fields(backend: Backend) -> dict[str, Any]:
    """IPVSDest keyword arguments: masquerading, weight 1."""
    return {"addr": str(backend.ip), "port": backend.port, "fwd_method": FWD_MASQ,
            "weight": 1}


def render_nft(services: Iterable[VirtualService]) -> str:
    """The marking/masquerading table for the IPVS backend (replaced atomically)."""
    m = f"{MASQ_MARK:#x}"
    vips = sorted({s.vip for s in services if s.vip is not None})
    marks = sorted({(s.protocol, s.port) for s in services if s.vip is None})
    lines = [f"table {NFT_TABLE} {{}}", f"delete table {NFT_TABLE}", f"table {NFT_TABLE} {{",
             "  set vips { type ipv4_addr; }",
             "  map fwmarks { type inet_proto . inet_service : mark; }",
             "  chain mark { ip daddr @vips meta mark set meta mark | " + m + "; "
             "fib daddr type local ip daddr != 127.0.0.0/8 meta mark set "
             "meta l4proto . th dport map @fwmarks; }",
             "  chain prerouting { type filter hook prerouting priority -150; "
             "policy accept; jump mark; }",
             "  chain output { type route hook output priority -150; policy accept; "
             "jump mark; }",
             "  chain postrouting { type nat hook postrouting priority 100; policy accept; "
             f"meta mark & {m} == {m} meta mark set meta mark ^ {m} masquerade; }}",
             "}"]
    if vips:
        lines.append(f"add element {NFT_TABLE} vips {{ {', '.join(map(str, vips))} }}")
    if marks:
        body = ", ".join(f"{p} . {port} : {fwmark_for(p, port):#x}" for p, port in marks)
        lines.append(f"add element {NFT_TABLE} fwmarks {{ {body} }}")
    return "\n".join(lines) + "\n"


def _service_key_of(msg_fields: dict[str, Any]) -> ServiceKey | None:
    """Key of a dumped IPVS service if it is Shoal's kind (VIP or Shoal fwmark)."""
    fwmark = msg_fields.get("fwmark") or 0
    if fwmark:
        if fwmark & 0xF0000000 != FWMARK_BASE:
            return None
        proto: Protocol = "udp" if fwmark & FWMARK_UDP else "tcp"
        return (None, fwmark & 0xFFFF, proto)
    addr, port = msg_fields.get("addr"), msg_fields.get("port")
    if addr is None or port is None:
        return None
    number = msg_fields.get("protocol")
    if number not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    return (ipaddress.IPv4Address(addr), int(port),
            "tcp" if number == socket.IPPROTO_TCP else "udp")


class IpvsLoadBalancer(LoadBalancer):
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._nft = NftRunner(netns)
        self._model: dict[ServiceKey, VirtualService] = {}
        self._prepared = False

    @property
    def backend_name(self) -> BackendName:
        return "ipvs"

    @property
    def services(self) -> dict[ServiceKey, VirtualService]:
        return dict(self._model)

    def _ipvs(self) -> Any:
        from pyroute2.ipvs import AsyncIPVS
        if self.netns is None:
            return AsyncIPVS()
        path = self.netns if "/" in self.netns else f"/var/run/netns/{self.netns}"
        return AsyncIPVS(netns=path, flags=0)

    def _iproute(self) -> Any:
        from pyroute2 import AsyncIPRoute
        if self.netns is None:
            return AsyncIPRoute()
        path = self.netns if "/" in self.netns else f"/var/run/netns/{self.netns}"
        return AsyncIPRoute(netns=path, flags=0)

    async def _prepare(self) -> None:
        if self._prepared:
            return
        # IPVS keeps conntrack entries only when asked; masquerading needs them.
        script = "echo 1 > /proc/sys/net/ipv4/vs/conntrack"
        argv = ["sh", "-c", script]
        if self.netns is not None:
            path = self.netns if "/" in self.netns else f"/var/run/netns/{self.netns}"
            argv = ["nsenter", f"--net={path}", *argv]
        proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"cannot enable net.ipv4.vs.conntrack: {err.decode().strip()}")
        self._prepared = True

    async def sync(self, services: Sequence[VirtualService]) -> None:
        await self._prepare()
        want = {s.key: s for s in services}
        await self._sync_vips({k[0] for k in want if k[0] is not None})
        await self._nft.run(render_nft(want.values()))
        async with self._ipvs() as ipvs:
            have = await self._dump(ipvs)
            for key in [k for k in have if k not in want]:
                await self._del_service(ipvs, key)
            for key, svc in want.items():
                await self._sync_service(ipvs, svc, have.get(key))
        self._model = want

    async def update_service(self, service: VirtualService) -> None:
        new_vip = service.vip is not None and service.vip not in {
            k[0] for k in self._model}
        new_mark = service.key not in self._model and service.vip is None
        self._model[service.key] = service
        if new_vip or new_mark or not self._prepared:
            # A new VIP or published port changes the address list and the marks.
            await self.sync(list(self._model.values()))
            return
        async with self._ipvs() as ipvs:
            have = await self._dump(ipvs)
            await self._sync_service(ipvs, service, have.get(service.key))

    async def remove_service(self, key: ServiceKey) -> None:
        if self._model.pop(key, None) is None:
            return
        await self.sync(list(self._model.values()))

    async def teardown(self) -> None:
        async with self._ipvs() as ipvs:
            for key in await self._dump(ipvs):
                await self._del_service(ipvs, key)
        await self._sync_vips(set(), remove_device=True)
        await self._nft.run(f"table {NFT_TABLE} {{}}\ndelete table {NFT_TABLE}\n")
        self._model.clear()

    async def close(self) -> None:
        self._nft.close()

    # ---- kernel access -------------------------------------------------------------------

    async def _dump(self, ipvs: Any) -> dict[ServiceKey, dict[Backend, int]]:
        """Shoal's IPVS services with their real servers and forwarding methods."""
        from pyroute2.ipvs import IPVSDest, IPVSService
        vips = await self._dummy_addresses()
        out: dict[ServiceKey, dict[Backend, int]] = {}
        for msg in await ipvs.service("dump"):
            svc = IPVSService.from_message(msg)
            key = _service_key_of(dict(svc))
            if key is None or (key[0] is not None and key[0] not in vips):
                continue
            dests: dict[Backend, int] = {}
            for dmsg in await ipvs.dest("dump", service=svc):
                d = IPVSDest.from_message(dmsg)
                dests[Backend(ipaddress.IPv4Address(d["addr"]), int(d["port"]))] = int(
                    d.get("fwd_method", FWD_MASQ))
            out[key] = dests
        return out

    async def _sync_service(self, ipvs: Any, svc: VirtualService,
                            have: dict[Backend, int] | None) -> None:
        from pyroute2.ipvs import IPVSDest, IPVSService
        service = IPVSService(**service_fields(svc))
        if have is None:
            await ipvs.service("add", service=service)
            have = {}
        want = set(svc.backends)
        for backend, method in have.items():
            if backend not in want:
                await ipvs.dest("del", service=service,
                                dest=IPVSDest(addr=str(backend.ip), port=backend.port))
            elif method != FWD_MASQ:
                await ipvs.dest("set", service=service, dest=IPVSDest(**dest_fields(backend)))
        for backend in svc.backends:
            if backend not in have:
                await ipvs.dest("add", service=service, dest=IPVSDest(**dest_fields(backend)))

    async def _del_service(self, ipvs: Any, key: ServiceKey) -> None:
        from pyroute2.ipvs import IPVSService
        await ipvs.service("del", service=IPVSService(**service_fields(key)))

    async def _dummy_addresses(self) -> set[ipaddress.IPv4Address]:
        async with self._iproute() as ipr:
            found = await ipr.link_lookup(ifname=DUMMY)
            if not found:
                return set()
            return {ipaddress.IPv4Address(a.get("address")) async for a in
                    await ipr.addr("dump", family=socket.AF_INET, index=found[0])
                    if a["index"] == found[0]}

    async def _sync_vips(self, vips: set[ipaddress.IPv4Address], *,
                         remove_device: bool = False) -> None:
        async with self._iproute() as ipr:
            found = await ipr.link_lookup(ifname=DUMMY)
            if remove_device:
                if found:
                    await ipr.link("del", index=found[0])
                return
            if not found:
                await ipr.link("add", ifname=DUMMY, kind="dummy")
                found = await ipr.link_lookup(ifname=DUMMY)
                await ipr.link("set", index=found[0], state="up")
            index = found[0]
            have = {ipaddress.IPv4Address(a.get("address")) async for a in
                    await ipr.addr("dump", family=socket.AF_INET, index=index)
                    if a["index"] == index}
            for vip in have - vips:
                await ipr.addr("del", index=index, address=str(vip), prefixlen=32)
            for vip in vips - have:
                await ipr.addr("add", index=index, address=str(vip), prefixlen=32)
