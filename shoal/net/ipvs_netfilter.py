"""The IPVS balancer's netfilter companion: firewall marks and masquerading.

IPVS alone cannot do what Swarm's VIPs and published ports need; netfilter rules beside
it do: they mark packets for fwmark services (published ports, whole VIPs) and
masquerade what IPVS forwards, so replies come back through this node. This module
owns that companion — the mark layout shared with the IPVS services
(:func:`fwmark_for`, :func:`fwmark_for_vip`), the rendering of its rules (pure, unit
tested) and the two flavours that apply them:

* ``nftables`` (preferred): a table ``ip shoal_ipvs`` with a set of VIPs, a map of
  published ports to marks and a map of whole VIPs (``VIP . proto``) to marks; VIP
  packets get a mark bit that postrouting masquerades on;
* ``iptables`` (``iptables-legacy``): for kernels that have IPVS and x_tables but no
  nf_tables for the ``ip`` family (Debian's user-mode-linux kernel). Masquerading needs
  no per-VIP rule: the ``ipvs`` match picks IPVS's own connections, as Docker's ingress
  sandbox does; published ports and whole VIPs are one MARK rule each (the whole-VIP
  rules last, so a VIP keeps its traffic on a port that is also published).

Kept out of ``lb_ipvs`` because it is a separate mechanism with its own tests; the
balancer (:class:`~shoal.net.lb_ipvs.IpvsLoadBalancer`) picks a flavour at its first
sync and drives it with :class:`NetfilterChange` deltas.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import ipaddress
import shutil
import struct
from collections.abc import Iterable, Sequence
from typing import Literal

from shoal.net import lb as lb_mod
from shoal.net import netns as netns_mod
from shoal.net import nft_drift, nft_scratch, nftnl
from shoal.net.lb import Protocol, VirtualService
from shoal.net.nft import NftError, NftRunner

MASQ_MARK = 0x10000000
# Firewall marks of published-port services: MASQ_MARK | proto bit | port, so the mark
# also asks for masquerading and can never collide with another service's.
FWMARK_BASE = MASQ_MARK
FWMARK_UDP = 0x00010000
# Firewall marks of whole-VIP (port 0) services: MASQ_MARK | FWMARK_VIP | proto bit | the
# VIP's low 27 bits. Unique as long as the VIPs share their top 5 bits (any VIP pool of
# /5 or smaller; the default is a /16); a collision is refused, never programmed.
FWMARK_VIP = 0x20000000
FWMARK_VIP_UDP = 0x08000000
FWMARK_VIP_ADDR = 0x07FFFFFF
FWMARK_KIND = 0xF0000000
NFT_TABLE = "ip shoal_ipvs"
NFT_FAMILY, NFT_NAME = NFT_TABLE.split()
NFT_SETS = ("vips", "fwmarks", "vipmarks")
IPT_MARK_CHAIN = "SHOAL-IPVS-MARK"  # mangle: published-port marks
IPT_MASQ_CHAIN = "SHOAL-IPVS-MASQ"  # nat: masquerade IPVS-forwarded traffic

Netfilter = Literal["nftables", "iptables"]


def fwmark_for(protocol: Protocol, port: int) -> int:
    """The mark of a published port's fwmark service."""
    return FWMARK_BASE | (FWMARK_UDP if protocol == "udp" else 0) | port


def fwmark_for_vip(vip: ipaddress.IPv4Address, protocol: Protocol) -> int:
    """The mark of a whole-VIP (port 0) fwmark service."""
    return (FWMARK_BASE | FWMARK_VIP | (FWMARK_VIP_UDP if protocol == "udp" else 0)
            | (int(vip) & FWMARK_VIP_ADDR))


# ---- rendering (pure) ------------------------------------------------

def render_nft(services: Iterable[VirtualService]) -> str:
    """The marking/masquerading table for the IPVS backend (replaced atomically)."""
    m = f"{MASQ_MARK:#x}"
    services = list(services)
    vips = sorted({s.vip for s in services if s.vip is not None})
    marks = sorted({(s.protocol, s.port) for s in services if s.vip is None})
    whole = sorted((s.vip, s.protocol) for s in services
                   if s.vip is not None and s.port == 0)
    lines = [f"table {NFT_TABLE} {{}}", f"delete table {NFT_TABLE}", f"table {NFT_TABLE} {{",
             "  set vips { type ipv4_addr; }",
             "  map fwmarks { type inet_proto . inet_service : mark; }",
             "  map vipmarks { type ipv4_addr . inet_proto : mark; }",
             "  chain tag { ip daddr @vips meta mark set meta mark | " + m + "; "
             "fib daddr type local ip daddr != 127.0.0.0/8 ip daddr != @vips "
             "meta mark set meta l4proto . th dport map @fwmarks; "
             "meta mark set ip daddr . meta l4proto map @vipmarks; }",
             "  chain prerouting { type filter hook prerouting priority -150; "
             "policy accept; jump tag; }",
             "  chain output { type route hook output priority -150; policy accept; "
             "jump tag; }",
             "  chain postrouting { type nat hook postrouting priority 100; policy accept; "
             f"meta mark & {m} == {m} meta mark set meta mark ^ {m} masquerade; }}",
             "}"]
    if vips:
        lines.append(f"add element {NFT_TABLE} vips {{ {', '.join(map(str, vips))} }}")
    if marks:
        body = ", ".join(_nft_mark_element(p, port) for p, port in marks)
        lines.append(f"add element {NFT_TABLE} fwmarks {{ {body} }}")
    if whole:
        body = ", ".join(_nft_vip_mark_element(v, p) for v, p in whole)
        lines.append(f"add element {NFT_TABLE} vipmarks {{ {body} }}")
    return "\n".join(lines) + "\n"


def _nft_mark_element(protocol: Protocol, port: int) -> str:
    return f"{protocol} . {port} : {fwmark_for(protocol, port):#x}"


def _nft_vip_mark_element(vip: ipaddress.IPv4Address, protocol: Protocol) -> str:
    return f"{vip} . {protocol} : {fwmark_for_vip(vip, protocol):#x}"


VipMark = tuple[ipaddress.IPv4Address, Protocol]  # a whole VIP's marking: (VIP, protocol)


def nft_elements(services: Iterable[VirtualService]
                 ) -> dict[str, dict[bytes, bytes | None]]:
    """The companion's set elements as the kernel dumps them (key -> data; see
    :func:`shoal.net.nftnl.split_element`): what :func:`render_nft` adds, for comparing
    with the kernel as bytes. A mark is the host-order u32 nft stores it as."""
    services = list(services)
    out: dict[str, dict[bytes, bytes | None]] = {name: {} for name in NFT_SETS}
    for s in services:
        if s.vip is not None:
            out["vips"][s.vip.packed] = None
            if s.port == 0:
                key = s.vip.packed + nftnl.PROTO_BYTES[s.protocol]
                out["vipmarks"][key] = struct.pack("=I", fwmark_for_vip(s.vip, s.protocol))
        else:
            key = nftnl.PROTO_BYTES[s.protocol] + nftnl.port_bytes(s.port)
            out["fwmarks"][key] = struct.pack("=I", fwmark_for(s.protocol, s.port))
    return out


# How the sets' keys read, for reports.
_NFT_KEYS = {"vips": nftnl.Layout(("addr",), None),
             "fwmarks": nftnl.Layout(("proto", "port"), None),
             "vipmarks": nftnl.Layout(("addr", "proto"), None)}


def nft_element_drift(want: dict[str, dict[bytes, bytes | None]],
                      have: dict[str, dict[bytes, bytes | None]]) -> list[str]:
    """One line per set whose elements differ: what is missing or wrong, what is stray."""
    lines = []
    for name in NFT_SETS:
        expected, found = want.get(name, {}), have.get(name, {})
        if expected == found:
            continue
        restored = [k for k, d in expected.items() if k not in found or found[k] != d]
        stray = [k for k in found if k not in expected]
        layout = _NFT_KEYS[name]
        if restored:
            lines.append(f"restored {len(restored)} element(s) of set {name} of table "
                         f"{NFT_TABLE}: {lb_mod.some(restored, describe=layout.describe)}")
        if stray:
            lines.append(f"removed {len(stray)} stray element(s) from set {name} of table "
                         f"{NFT_TABLE}: {lb_mod.some(stray, describe=layout.describe)}")
    return lines


def render_nft_change(*, vips_added: Iterable[ipaddress.IPv4Address] = (),
                      vips_removed: Iterable[ipaddress.IPv4Address] = (),
                      ports_added: Iterable[tuple[Protocol, int]] = (),
                      ports_removed: Iterable[tuple[Protocol, int]] = (),
                      marks_added: Iterable[VipMark] = (),
                      marks_removed: Iterable[VipMark] = ()) -> str:
    """Element additions/removals for one change (empty string: nothing to do)."""
    lines = []
    if unmarked := sorted(marks_removed):
        keys = ", ".join(f"{v} . {p}" for v, p in unmarked)
        lines.append(f"delete element {NFT_TABLE} vipmarks {{ {keys} }}")
    if removed := sorted(vips_removed):
        lines.append(f"delete element {NFT_TABLE} vips {{ {', '.join(map(str, removed))} }}")
    if added := sorted(vips_added):
        lines.append(f"add element {NFT_TABLE} vips {{ {', '.join(map(str, added))} }}")
    if gone := sorted(ports_removed):
        keys = ", ".join(f"{p} . {port}" for p, port in gone)
        lines.append(f"delete element {NFT_TABLE} fwmarks {{ {keys} }}")
    if new := sorted(ports_added):
        body = ", ".join(_nft_mark_element(p, port) for p, port in new)
        lines.append(f"add element {NFT_TABLE} fwmarks {{ {body} }}")
    if marked := sorted(marks_added):
        body = ", ".join(_nft_vip_mark_element(v, p) for v, p in marked)
        lines.append(f"add element {NFT_TABLE} vipmarks {{ {body} }}")
    return "".join(f"{line}\n" for line in lines)


def render_iptables(services: Iterable[VirtualService], *,
                    jumps_present: Iterable[tuple[str, str]] = ()) -> str:
    """``iptables-restore --noflush`` input owning two chains. Declaring a chain in a
    restore file flushes it, so the chains are rewritten whole; the jumps from the
    built-in chains are added only where ``jumps_present`` (table, chain) lacks them."""
    have = set(jumps_present)
    services = list(services)
    ports = sorted({(s.protocol, s.port) for s in services if s.vip is None})
    whole = sorted((s.vip, s.protocol) for s in services
                   if s.vip is not None and s.port == 0)
    mangle = ["*mangle", f":{IPT_MARK_CHAIN} - [0:0]"]
    for proto, port in ports:
        mangle.append(f"-A {IPT_MARK_CHAIN} -p {proto} -m {proto} --dport {port} "
                      "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 "
                      f"-j MARK --set-xmark {fwmark_for(proto, port):#x}/0xffffffff")
    # After the published ports: MARK does not stop the chain, so the last match wins
    # and a whole VIP keeps its traffic on a port that is also published.
    for vip, proto in whole:
        mangle.append(f"-A {IPT_MARK_CHAIN} -d {vip}/32 -p {proto} "
                      f"-j MARK --set-xmark {fwmark_for_vip(vip, proto):#x}/0xffffffff")
    for builtin in ("PREROUTING", "OUTPUT"):
        if ("mangle", builtin) not in have:
            mangle.append(f"-A {builtin} -j {IPT_MARK_CHAIN}")
    nat = ["*nat", f":{IPT_MASQ_CHAIN} - [0:0]",
           f"-A {IPT_MASQ_CHAIN} -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ "
           "-j MASQUERADE"]
    if ("nat", "POSTROUTING") not in have:
        nat.append(f"-A POSTROUTING -j {IPT_MASQ_CHAIN}")
    return "\n".join([*mangle, "COMMIT", *nat, "COMMIT"]) + "\n"


def iptables_jumps(saved: str) -> set[tuple[str, str]]:
    """(table, built-in chain) pairs that already jump to our chains, from
    ``iptables-save`` output."""
    found: set[tuple[str, str]] = set()
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        parts = line.split()
        if len(parts) == 4 and parts[0] == "-A" and parts[2] == "-j" and parts[3] in (
                IPT_MARK_CHAIN, IPT_MASQ_CHAIN):
            found.add((table, parts[1]))
    return found


def render_iptables_teardown(saved: str) -> str:
    """Restore input removing our jumps and chains, given ``iptables-save`` output."""
    tables: dict[str, list[str]] = {"mangle": [], "nat": []}
    for table, chain in sorted(iptables_jumps(saved)):
        target = IPT_MARK_CHAIN if table == "mangle" else IPT_MASQ_CHAIN
        tables.setdefault(table, []).append(f"-D {chain} -j {target}")
    for table, chain in (("mangle", IPT_MARK_CHAIN), ("nat", IPT_MASQ_CHAIN)):
        if f":{chain} " in saved:
            tables[table] += [f"-F {chain}", f"-X {chain}"]
    out: list[str] = []
    for table, lines in tables.items():
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "".join(f"{line}\n" for line in out)


# ---- netfilter companions -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NetfilterChange:
    """What one balancer change adds to and removes from the netfilter companion: VIPs,
    published ports and whole-VIP marks (anything not named is unchanged)."""

    vips_added: frozenset[ipaddress.IPv4Address] = frozenset()
    vips_removed: frozenset[ipaddress.IPv4Address] = frozenset()
    ports_added: frozenset[tuple[Protocol, int]] = frozenset()
    ports_removed: frozenset[tuple[Protocol, int]] = frozenset()
    marks_added: frozenset[VipMark] = frozenset()
    marks_removed: frozenset[VipMark] = frozenset()


class Companion(abc.ABC):
    """One way of marking and masquerading for the IPVS balancer."""

    name: Netfilter

    @abc.abstractmethod
    async def full(self, services: Sequence[VirtualService]) -> None:
        """Make the companion hold exactly what ``services`` need."""

    @abc.abstractmethod
    async def change(self, services: Sequence[VirtualService], delta: NetfilterChange,
                     ) -> None:
        """Apply one change; ``services`` is the whole model after it (for a rebuild)."""

    async def repair(self, services: Sequence[VirtualService]) -> list[str]:
        """Make the companion hold exactly ``services``, writing nothing when it already
        does, and say what had drifted. This default cannot tell: it rewrites the
        companion and reports nothing."""
        await self.full(services)
        return []

    @abc.abstractmethod
    async def teardown(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class NftCompanion(Companion):
    """The ``ip shoal_ipvs`` nftables table."""

    name: Netfilter = "nftables"

    def __init__(self, runner: NftRunner) -> None:
        self.runner = runner
        self._nl: nftnl.NftNetlink | None = None

    async def probe(self) -> None:
        """Raise NftError when this kernel cannot hold an ``ip`` family table."""
        await self.runner.run(f"table {NFT_TABLE} {{}}\n")

    async def full(self, services: Sequence[VirtualService]) -> None:
        await self.runner.run(render_nft(services))

    async def change(self, services: Sequence[VirtualService], delta: NetfilterChange,
                     ) -> None:
        script = render_nft_change(
            vips_added=delta.vips_added, vips_removed=delta.vips_removed,
            ports_added=delta.ports_added, ports_removed=delta.ports_removed,
            marks_added=delta.marks_added, marks_removed=delta.marks_removed)
        if not script:
            return
        try:
            await self.runner.run(script)
        except NftError:
            # The table drifted (deleted, or elements changed by hand): rebuild it.
            await self.full(services)

    async def repair(self, services: Sequence[VirtualService]) -> list[str]:
        """Compare the table with what :func:`render_nft` makes -- chains, rules and set
        declarations against a reference written in a throw-away namespace
        (:mod:`shoal.net.nft_scratch`), elements as bytes against :func:`nft_elements` --
        and only when something differs rewrite it (whole: one transaction, and the table
        is a rule and an element or two per VIP). Three small dumps and the elements'
        dump when nothing drifted; where no reference can be made, the old way: rewritten
        every time, unreported."""
        reference = await nft_scratch.reference(NFT_FAMILY, NFT_NAME, render_nft(()))
        if reference is None:
            await self.full(services)
            return []
        nl = await self._netlink()
        have = await asyncio.to_thread(nl.table_state)
        if have is None:
            await self.full(services)
            return [f"table {NFT_TABLE} was missing: rebuilt"]
        drift = nft_drift.compare(have, reference, table=NFT_TABLE,
                                  chains=reference.chains.keys(), sets=NFT_SETS)
        lines = [*drift.other_type_lines(), *drift.lines]
        found: dict[str, dict[bytes, bytes | None]] = {}
        for name in NFT_SETS:
            if name in have.sets and name not in drift.other_type_sets:
                found[name] = dict(await asyncio.to_thread(nl.set_elements, name))
        want = nft_elements(services)
        if drift.other_type_sets:  # its elements cannot be compared: rewritten anyway
            want = {k: v for k, v in want.items() if k not in drift.other_type_sets}
        lines += nft_element_drift(want, found)
        lines += drift.stray_lines()
        if lines:
            await self.full(services)
        return lines

    async def _netlink(self) -> nftnl.NftNetlink:
        if self._nl is None:
            path = None if self.runner.netns is None else netns_mod.path(self.runner.netns)
            self._nl = await asyncio.to_thread(nftnl.NftNetlink, path, NFT_NAME)
        return self._nl

    async def teardown(self) -> None:
        await self.runner.run(f"table {NFT_TABLE} {{}}\ndelete table {NFT_TABLE}\n")

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None
        self.runner.close()


class IptablesCompanion(Companion):
    """Two iptables-legacy chains, for kernels without nf_tables for ``ip``."""

    name: Netfilter = "iptables"

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        # Legacy explicitly: on a kernel without nf_tables for ``ip`` (the only reason to
        # be here) the nft-based iptables fails exactly like nft does.
        self.restore = shutil.which("iptables-legacy-restore") or "iptables-restore"
        self.save = shutil.which("iptables-legacy-save") or "iptables-save"

    async def _run(self, *argv: str, stdin: str | None = None) -> str:
        return await netns_mod.run_command(self.netns, *argv, stdin=stdin)

    async def _saved(self) -> str:
        return (await self._run(self.save, "-t", "mangle")
                + await self._run(self.save, "-t", "nat"))

    async def probe(self) -> None:
        await self._saved()

    async def full(self, services: Sequence[VirtualService]) -> None:
        saved = await self._saved()
        await self._run(self.restore, "--noflush",
                        stdin=render_iptables(services, jumps_present=iptables_jumps(saved)))

    async def change(self, services: Sequence[VirtualService], delta: NetfilterChange,
                     ) -> None:
        # VIPs need no masquerading rule here (the ipvs match covers every IPVS
        # connection); published ports and whole VIPs are one MARK rule each, so their
        # chain is rewritten whole (iptables-restore replaces a chain in one commit).
        if (delta.ports_added or delta.ports_removed or delta.marks_added
                or delta.marks_removed):
            await self.full(services)

    async def teardown(self) -> None:
        script = render_iptables_teardown(await self._saved())
        if script:
            await self._run(self.restore, "--noflush", stdin=script)
