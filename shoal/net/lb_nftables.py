"""Service load balancing with nftables DNAT, for kernels without IPVS.

In the spirit of kube-proxy's nftables mode: one table (``ip shoal``) owned entirely by
Shoal, where a change is proportional to what changed. The layout was chosen by measuring
10,000 services x 10 endpoints on a 6.x kernel (bench/dataplane.py):

* A verdict map ``svc`` dispatches ``VIP . protocol . port`` to a *shared* chain
  ``lb_<proto>_<N>`` -- one per protocol and backend count N, not one per service.
* That chain's single rule is ``dnat ip to ip daddr . <proto> dport . numgen random mod N
  map @be_<proto>``: the backends of every service live as elements of one map keyed by
  ``VIP . port . index``. Changing a service's endpoints is a handful of element
  deletions and additions in one transaction; no rule is rewritten.
* Why not a chain per service with an anonymous ``numgen ... map { }``: the kernel scans
  all anonymous sets of a table to name a new one, and checks every element added to a
  named map against each rule bound to it, so both scale quadratically (11 s and 21 s for
  the 10,000-service full sync); a few shared chains keep the bindings few.

Published ingress ports (VirtualService.vip None) use the same scheme keyed by port alone
(maps ``np``/``np_<proto>``), matched only for packets addressed to a local address --
including 127.0.0.0/8 for connections made on the node itself (``curl localhost:8080``
answers, as with Docker's mesh): the agent sets ``route_localnet`` on the ingress bridge
so such a connection may leave through it, masqueraded like all mesh traffic, and a
``martians`` chain drops 127/8 arriving from anywhere but ``lo``.

A VIP that balances *every* port of a protocol (``VirtualService.port`` 0, what a Swarm VIP
does: a service need not declare the ports it listens on) is dispatched by ``VIP .
protocol`` alone (map ``svca``, consulted after the exact-port ``svc``) to a shared chain
``va_<proto>_<N>`` that rewrites only the destination address, from ``va_<proto>`` keyed
``VIP . index``; the destination port is kept.

VIP traffic is marked in the lb chain and masqueraded in postrouting (the mark bit is
cleared first so it cannot follow the packet into the VXLAN encapsulation). Traffic to a
known VIP that no rule translated -- a service with no backends, or a port the VIP does not
serve -- is rejected at once in the filter hooks instead of leaking to a default route.

Writing: the rules as nft text (:class:`shoal.net.nft.NftRunner`), the elements as raw
nf_tables netlink (:mod:`shoal.net.nftnl`, encoded by :mod:`shoal.net.nft_elements`) --
nft's text parse of ~110,000 elements was most of a 10,000-service full sync. A full sync
is two transactions, each atomic for traffic: :func:`render_prepare` declares the sets and
chains and flushes and refills every chain's rules without touching an element (identical
rules over an identical table), then ONE netlink batch flushes every set and adds every
element; chains nothing refers to any more go last. So a re-sync, or a restarted agent's
first sync, never shows traffic an empty table. Where the skeleton cannot be prepared in
place (an older Shoal's set of another type) the whole table is replaced by the text
script of :func:`render_full` in one transaction, as before. Incremental changes are
netlink batches too (a chain for a new backend count is added by text first: unreferenced
until the batch's dispatch element; a chain whose last service left is deleted at the
batch's end). :meth:`NftablesLoadBalancer.repair` diffs the kernel's chains (hook,
priority, policy), rules, set declarations and elements (netlink dumps, compared as bytes
with a reference written in a throw-away namespace, :mod:`shoal.net.nft_scratch`, and
with the model's encoding) and writes only the difference; a fresh balancer's first sync
over an existing table is that same repair (adoption), so a restarted agent writes
nothing when nothing changed.

Rendering and encoding are pure (``render_*``, ``netlink_change``, nft_elements), so they
are unit-tested without a kernel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from shoal.net import lb as lb_mod
from shoal.net import netns as netns_mod
from shoal.net import nft_drift, nft_elements, nft_scratch, nftnl
from shoal.net.lb import BackendName, LoadBalancer, ServiceKey, VirtualService
from shoal.net.nft import NftError, NftRunner, RunnerKind

FullSyncKind = Literal["netlink", "text"]

TABLE = "shoal"
FAMILY = "ip"
T = f"{FAMILY} {TABLE}"
MASQ_MARK = 0x10000000  # one bit of the packet mark, cleared again before masquerade
# Beyond this many changed services an incremental script is no cheaper than a new table.
FULL_SYNC_THRESHOLD = 2000
PROTOCOLS = ("tcp", "udp")
ELEMENT_CHUNK = 2000
REPORT_LINES = 20  # per set: beyond this many services, repair() reports a summary


def _kind(svc: VirtualService) -> str:
    """np: published port; va: every port of a VIP; lb: one port of a VIP."""
    if svc.vip is None:
        return "np"
    return "va" if svc.port == 0 else "lb"


LB_CHAIN = re.compile(r"(lb|va|np)_(tcp|udp)_[1-9][0-9]*")  # the names lb_chain() makes


def lb_chain(svc: VirtualService) -> str:
    """The shared chain that balances ``svc`` (depends only on kind, protocol, count)."""
    return f"{_kind(svc)}_{svc.protocol}_{len(svc.backends)}"


def _dispatch(key: ServiceKey) -> tuple[str, str]:
    """(verdict map, element key) that sends a service's packets to its lb chain."""
    vip, port, proto = key
    if vip is None:
        return "np", f"{proto} . {port}"
    if port == 0:
        return "svca", f"{vip} . {proto}"
    return "svc", f"{vip} . {proto} . {port}"


# The backend map of each kind of service (per protocol: ``<map>_<proto>``).
_BACKEND_MAP = {"np": "np", "va": "va", "lb": "be"}


def _backend_map(svc: VirtualService) -> str:
    return f"{_BACKEND_MAP[_kind(svc)]}_{svc.protocol}"


def _backend_head(svc: VirtualService) -> str:
    if svc.vip is None:
        return f"{svc.port} . "
    if svc.port == 0:
        return f"{svc.vip} . "
    return f"{svc.vip} . {svc.port} . "


def _backend_elements(svc: VirtualService) -> list[str]:
    head = _backend_head(svc)
    if svc.vip is not None and svc.port == 0:  # the address only: the port is kept
        return [f"{head}{i} : {b.ip_text}" for i, b in enumerate(svc.backends)]
    return [f"{head}{i} : {b.ip_text} . {b.port}" for i, b in enumerate(svc.backends)]


def _backend_keys(svc: VirtualService) -> list[str]:
    head = _backend_head(svc)
    return [f"{head}{i}" for i in range(len(svc.backends))]


def render_chain(name: str) -> str:
    """The one rule of a shared lb chain, from its name (kind_proto_count)."""
    kind, proto, count = name.split("_")
    mark = f"meta mark set meta mark | {MASQ_MARK:#x}"
    key = {"lb": f"ip daddr . {proto} dport", "va": "ip daddr",
           "np": f"{proto} dport"}[kind]
    return (f"{mark} dnat ip to {key} . numgen random mod {count} "
            f"map @{_BACKEND_MAP[kind]}_{proto}")


# The table's fixed sets and maps: (kind, name, declaration).
SETS: list[tuple[str, str, str]] = [
    ("map", "svc", "type ipv4_addr . inet_proto . inet_service : verdict;"),
    ("map", "svca", "type ipv4_addr . inet_proto : verdict;"),
    ("map", "np", "type inet_proto . inet_service : verdict;"),
    ("set", "vips", "type ipv4_addr;"),
]
for _proto in PROTOCOLS:
    SETS += [
        ("map", f"be_{_proto}", f"typeof ip daddr . {_proto} dport . numgen random mod 1 : "
                                f"ip daddr . {_proto} dport;"),
        ("map", f"va_{_proto}", "typeof ip daddr . numgen random mod 1 : ip daddr;"),
        ("map", f"np_{_proto}", f"typeof {_proto} dport . numgen random mod 1 : "
                                f"ip daddr . {_proto} dport;"),
    ]
SET_NAMES = [name for _, name, _ in SETS]


def _skeleton_chains() -> list[tuple[str, str | None, list[str]]]:
    """The table's fixed chains: (name, base chain declaration or None, rules)."""
    m = f"{MASQ_MARK:#x}"
    return [
        ("prerouting", "type nat hook prerouting priority -100; policy accept;",
         ["jump services"]),
        # Locally originated: published ports answer on 127.0.0.0/8 too, as Docker's
        # mesh does (the agent sets route_localnet on the ingress bridge, and the mark
        # masquerades the loopback source); never for packets arriving from outside.
        ("output", "type nat hook output priority -100; policy accept;",
         ["jump services", "ip daddr 127.0.0.0/8 meta l4proto . th dport vmap @np"]),
        # route_localnet would also accept 127/8 arriving on that bridge: drop such
        # martians before conntrack (replies still carry the node's address here).
        ("martians", "type filter hook prerouting priority -300; policy accept;",
         ['iifname != "lo" ip daddr 127.0.0.0/8 drop']),
        ("services", None,
         ["ip daddr . meta l4proto . th dport vmap @svc",
          "ip daddr . meta l4proto vmap @svca",
          "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @np"]),
        ("postrouting", "type nat hook postrouting priority 100; policy accept;",
         [f"meta mark & {m} == {m} meta mark set meta mark ^ {m} masquerade"]),
        ("reject_vip", None, ["meta l4proto tcp reject with tcp reset", "reject"]),
        ("forward", "type filter hook forward priority 0; policy accept;",
         ["ip daddr @vips jump reject_vip"]),
        ("filter_output", "type filter hook output priority 0; policy accept;",
         ["ip daddr @vips jump reject_vip"]),
    ]


SKELETON_CHAINS = _skeleton_chains()
CHAIN_NAMES = {name for name, _, _ in SKELETON_CHAINS}


def render_skeleton() -> list[str]:
    """The table's fixed part, in nft's block syntax (one line each)."""
    lines = [f"  {kind} {name} {{ {decl} }}" for kind, name, decl in SETS]
    for name, base, rules in SKELETON_CHAINS:
        body = " ".join([*([base] if base else []), *(f"{r};" for r in rules)])
        lines.append(f"  chain {name} {{ {body} }}")
    return lines


def render_prepare(chains: Iterable[str]) -> str:
    """A script that makes the table's skeleton and these lb chains exactly what Shoal
    writes, keeping every set element: sets are declared (a no-op when present with the
    same type; an error when an older Shoal left another type), and each chain is
    flushed and refilled -- one transaction, so traffic sees the old rules or the new,
    never none. Chains it does not name are left alone."""
    lines = [f"add table {T}"]
    lines += [f"add {kind} {T} {name} {{ {decl} }}" for kind, name, decl in SETS]
    every = [*SKELETON_CHAINS, *((c, None, [render_chain(c)]) for c in sorted(chains))]
    # Every chain exists before any rule jumps to it.
    lines += [f"add chain {T} {name}" + (f" {{ {base} }}" if base else "")
              for name, base, _ in every]
    for name, _, rules in every:
        lines.append(f"flush chain {T} {name}")
        lines += [f"add rule {T} {name} {rule}" for rule in rules]
    return "\n".join(lines) + "\n"


def render_repair(*, missing: Iterable[str] = (), recreate: Iterable[str] = (),
                  refill: Iterable[str] = (), sets: Iterable[str] = ()) -> str:
    """One transaction putting back what drifted in the table's structure: ``sets``
    declared, ``refill`` chains flushed and refilled, ``recreate`` chains (another hook,
    priority or policy, or base where they should not be) deleted and declared again,
    ``missing`` chains declared; then the rules of all of those. Flushes come first, so
    a stray rule referring to a chain being recreated is gone before the delete; chains
    it does not name keep their rules untouched."""
    missing, recreate, refill = list(missing), list(recreate), list(refill)
    every = {name: (base, rules) for name, base, rules in SKELETON_CHAINS}
    decl = {set_name: (kind, d) for kind, set_name, d in SETS}

    def chain(name: str) -> tuple[str | None, list[str]]:
        return every.get(name) or (None, [render_chain(name)])
    lines = [f"add table {T}"]
    lines += [f"add {decl[name][0]} {T} {name} {{ {decl[name][1]} }}" for name in sets]
    lines += [f"flush chain {T} {name}" for name in [*refill, *recreate]]
    lines += [f"delete chain {T} {name}" for name in recreate]
    for name in [*missing, *recreate]:
        base, _ = chain(name)
        lines.append(f"add chain {T} {name}" + (f" {{ {base} }}" if base else ""))
    for name in [*missing, *recreate, *refill]:
        lines += [f"add rule {T} {name} {rule}" for rule in chain(name)[1]]
    return "\n".join(lines) + "\n"


def render_removal(chains: Iterable[str], sets: Iterable[str]) -> str:
    """One transaction deleting chains and sets that are not Shoal's: their rules first
    (a stray rule may refer to a stray set), then the sets (a stray verdict map may
    refer to a stray chain), then the chains."""
    chains = list(chains)
    lines = [f"flush chain {T} {c}" for c in chains]
    lines += [f"delete set {T} {s}" for s in sets]
    lines += [f"delete chain {T} {c}" for c in chains]
    return "\n".join(lines) + "\n"


def render_full(services: Sequence[VirtualService]) -> str:
    """A script that replaces the whole table atomically with exactly ``services``.
    Chains and rules come before elements: binding a rule to a map that already holds
    elements makes the kernel walk them."""
    chains = sorted({lb_chain(s) for s in services if s.backends})
    lines = [f"table {T} {{}}", f"delete table {T}", f"table {T} {{", *render_skeleton(),
             *(f"  chain {c} {{ {render_chain(c)}; }}" for c in chains), "}"]
    dispatch: dict[str, list[str]] = {"svc": [], "svca": [], "np": []}
    backends: dict[str, list[str]] = {}
    vips: set[ipaddress.IPv4Address] = set()
    for svc in services:
        if svc.vip is not None:
            vips.add(svc.vip)
        if not svc.backends:
            continue
        name, key = _dispatch(svc.key)
        dispatch[name].append(f"{key} : goto {lb_chain(svc)}")
        backends.setdefault(_backend_map(svc), []).extend(_backend_elements(svc))
    for name, elements in [*dispatch.items(), *sorted(backends.items())]:
        # Chunks keep each command small; measured a little faster than one huge list.
        for i in range(0, len(elements), ELEMENT_CHUNK):
            chunk = ", ".join(elements[i:i + ELEMENT_CHUNK])
            lines.append(f"add element {T} {name} {{ {chunk} }}")
    if vips:
        lines.append(f"add element {T} vips {{ {', '.join(map(str, sorted(vips)))} }}")
    return "\n".join(lines) + "\n"


def render_change(old: VirtualService | None, new: VirtualService | None, *,
                  chains: set[str], vip_refs: dict[ipaddress.IPv4Address, int]) -> list[str]:
    """Commands turning one service from ``old`` into ``new`` (either may be None for a
    creation or a removal). ``chains`` (lb chains present) and ``vip_refs`` (services per
    VIP) are updated in place to describe the table after the commands."""
    lines: list[str] = []
    ref = old or new
    assert ref is not None
    dmap, dkey = _dispatch(ref.key)
    old_chain = lb_chain(old) if old is not None and old.backends else None
    new_chain = lb_chain(new) if new is not None and new.backends else None
    if new_chain is not None and new_chain not in chains:
        lines += [f"add chain {T} {new_chain}", f"add rule {T} {new_chain} "
                  f"{render_chain(new_chain)}"]
        chains.add(new_chain)
    if old_chain is not None and old_chain != new_chain:
        lines.append(f"delete element {T} {dmap} {{ {dkey} }}")
    # Backend slots: drop the old ones that differ, add the new ones that differ.
    old_el = _backend_elements(old) if old is not None else []
    new_el = _backend_elements(new) if new is not None else []
    old_keys = _backend_keys(old) if old is not None else []
    stale = [k for k, e in zip(old_keys, old_el, strict=True) if e not in new_el]
    fresh = [e for e in new_el if e not in old_el]
    bmap = _backend_map(ref)
    if stale:
        lines.append(f"delete element {T} {bmap} {{ {', '.join(stale)} }}")
    if fresh:
        lines.append(f"add element {T} {bmap} {{ {', '.join(fresh)} }}")
    if new_chain is not None and new_chain != old_chain:
        lines.append(f"add element {T} {dmap} {{ {dkey} : goto {new_chain} }}")
    # The VIP set counts services per VIP: the last one out removes the VIP.
    if old is None and new is not None and new.vip is not None:
        vip_refs[new.vip] = vip_refs.get(new.vip, 0) + 1
        if vip_refs[new.vip] == 1:
            lines.append(f"add element {T} vips {{ {new.vip} }}")
    if new is None and old is not None and old.vip is not None:
        vip_refs[old.vip] -= 1
        if vip_refs[old.vip] == 0:
            del vip_refs[old.vip]
            lines.append(f"delete element {T} vips {{ {old.vip} }}")
    return lines


def netlink_change(old: VirtualService | None, new: VirtualService | None, *,
                   chains: set[str], vip_refs: dict[ipaddress.IPv4Address, int]
                   ) -> tuple[list[str], list[nftnl.SetOp]]:
    """:func:`render_change` as netlink: (nft lines creating a chain ``new`` needs, set
    operations). One service's change is a handful of elements; sent as netlink it
    skips libnftables' parse and its cache refresh (measured: ~4 ms against ~30 ms per
    change on a 10,000-service table under load)."""
    lines: list[str] = []
    ops: list[nftnl.SetOp] = []
    ref = old or new
    assert ref is not None
    old_chain = lb_chain(old) if old is not None and old.backends else None
    new_chain = lb_chain(new) if new is not None and new.backends else None
    if new_chain is not None and new_chain not in chains:
        lines += [f"add chain {T} {new_chain}",
                  f"add rule {T} {new_chain} {render_chain(new_chain)}"]
        chains.add(new_chain)
    if old_chain is not None and old_chain != new_chain:
        assert old is not None
        dmap, dkey, _ = nft_elements.dispatch_element(old)
        ops.append(nftnl.SetOp("delete", dmap, [nft_elements.key_only(dkey)]))
    bmap = _backend_map(ref)
    old_el = nft_elements.backend_elements(old)[1] if old is not None else []
    new_el = nft_elements.backend_elements(new)[1] if new is not None else []
    old_keys = nft_elements.backend_keys(old) if old is not None else []
    fresh_set = set(new_el)
    old_set = set(old_el)
    stale = [k for k, e in zip(old_keys, old_el, strict=True) if e not in fresh_set]
    fresh = [e for e in new_el if e not in old_set]
    if stale:
        ops.append(nftnl.SetOp("delete", bmap, [nft_elements.key_only(k) for k in stale]))
    if fresh:
        ops.append(nftnl.SetOp("add", bmap, fresh))
    if new_chain is not None and new_chain != old_chain:
        assert new is not None
        dmap, _, item = nft_elements.dispatch_element(new)
        ops.append(nftnl.SetOp("add", dmap, [item]))
    if old is None and new is not None and new.vip is not None:
        vip_refs[new.vip] = vip_refs.get(new.vip, 0) + 1
        if vip_refs[new.vip] == 1:
            ops.append(nftnl.SetOp("add", "vips", [nft_elements.vip_element(new.vip)]))
    if new is None and old is not None and old.vip is not None:
        vip_refs[old.vip] -= 1
        if vip_refs[old.vip] == 0:
            del vip_refs[old.vip]
            ops.append(nftnl.SetOp("delete", "vips", [nft_elements.key_only(old.vip.packed)]))
    return lines, ops


@dataclasses.dataclass(frozen=True)
class _Model:
    """What a balancer believes the table holds: its services by key, the lb chains they
    use and how many services use each (a chain goes when its last user does), and how
    many services each VIP carries (the ``vips`` set's reference counts)."""

    services: dict[ServiceKey, VirtualService]
    vip_refs: dict[ipaddress.IPv4Address, int]
    chain_refs: dict[str, int]

    @property
    def chains(self) -> set[str]:
        return set(self.chain_refs)

    @classmethod
    def of(cls, services: list[VirtualService]) -> _Model:
        refs: dict[ipaddress.IPv4Address, int] = {}
        chain_refs: dict[str, int] = {}
        for s in services:
            if s.vip is not None:
                refs[s.vip] = refs.get(s.vip, 0) + 1
            if s.backends:
                chain = lb_chain(s)
                chain_refs[chain] = chain_refs.get(chain, 0) + 1
        return cls({s.key: s for s in services}, refs, chain_refs)


class NftablesLoadBalancer(LoadBalancer):
    """Keeps a model of what it programmed so each change is rendered as a small diff;
    when the kernel disagrees with the model (someone flushed the table) the incremental
    script fails and a full sync rebuilds the table from the model.

    ``full_sync`` picks how a full sync writes the elements: ``"netlink"`` (the default:
    skeleton by text, elements as one raw netlink batch) or ``"text"`` (the whole table
    as one nft script; kept as the baseline the bench and tests compare with)."""

    def __init__(self, netns: str | None = None, runner: NftRunner | None = None,
                 runner_kind: RunnerKind | None = None,
                 full_sync: FullSyncKind = "netlink") -> None:
        self.runner = runner or NftRunner(netns, runner_kind)
        self.full_sync_kind: FullSyncKind = full_sync
        self._netns_path = None if self.runner.netns is None else netns_mod.path(
            self.runner.netns)
        self._nl: nftnl.NftNetlink | None = None
        self._model: dict[ServiceKey, VirtualService] = {}
        self._vip_refs: dict[ipaddress.IPv4Address, int] = {}
        self._chain_refs: dict[str, int] = {}
        # The table as last written (chains, rules, set declarations), as the kernel
        # holds it: what repair() compares with where nft_scratch cannot make a reference.
        self._written: nftnl.TableState | None = None
        # How the last full sync wrote the table ("netlink", "text", or "text (why)" when
        # the netlink path fell back, "adopted" when the first sync found the table an
        # earlier agent left and wrote only the difference): for logs, tests and the bench.
        self.last_full_sync: str | None = None
        self._adoption: list[str] = []
        self._synced = False

    @property
    def backend_name(self) -> BackendName:
        return "nftables"

    @property
    def services(self) -> dict[ServiceKey, VirtualService]:
        return dict(self._model)

    async def sync(self, services: Sequence[VirtualService]) -> None:
        want = {s.key: s for s in services}
        if len(want) != len(services):
            raise ValueError("duplicate services (same VIP, port and protocol) in sync")
        if self._synced:
            changed = [s for k, s in want.items() if self._model.get(k) != s]
            gone = [k for k in self._model if k not in want]
            if not changed and not gone:
                return
            if len(changed) + len(gone) <= FULL_SYNC_THRESHOLD:
                await self._apply(changed, gone)
                return
            await self._full(want.values())
            return
        await self._first_sync(list(want.values()))

    async def resync(self) -> None:
        await self._full(self._model.values())

    async def update_service(self, service: VirtualService) -> None:
        if self._model.get(service.key) == service and self._synced:
            return
        await self._apply([service], [])

    async def remove_service(self, key: ServiceKey) -> None:
        if key in self._model:
            await self._apply([], [key])

    async def teardown(self) -> None:
        await self.runner.run(f"table {T} {{}}\ndelete table {T}\n")
        self._model.clear()
        self._vip_refs.clear()
        self._chain_refs.clear()
        self._written = None
        self._synced = False

    async def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None
        self.runner.close()

    async def repair(self) -> list[str]:
        """Compare the kernel's table with the model and fix only what differs: chains
        (their hook, priority and policy, then their rules) and sets (declared, then
        each one's elements, a netlink dump compared as bytes with the model's encoding);
        a chain or set the model does not have is removed. Reads only when nothing
        drifted. Returns what was repaired, one line each."""
        if not self._synced:
            await self.resync()
            return []
        return await self._reconcile(list(self._model.values()))

    def adoption_report(self) -> list[str]:
        lines, self._adoption = self._adoption, []
        return lines

    async def _first_sync(self, services: list[VirtualService]) -> None:
        """A fresh balancer (a restarted agent) adopts the table an earlier one left: the
        difference between it and ``services`` is written, nothing else -- with nothing
        changed, nothing at all. Without a table, or with the text full sync (the
        bench's baseline), the table is written whole."""
        if self.full_sync_kind == "text":
            await self._full(services)
            return
        self.last_full_sync = None  # set by _full when the table is written after all
        self._adoption = await self._reconcile(services, adopting=True)
        if self.last_full_sync is None:
            self.last_full_sync = "adopted"

    async def _reconcile(self, services: list[VirtualService], *, adopting: bool = False
                         ) -> list[str]:
        """Make the table hold exactly ``services``, writing only what differs from
        what the kernel holds, and say what that was. Three steps, each one transaction:
        (1) structure -- missing sets, chains that are missing, declared otherwise
        (recreated: the kernel cannot change a base chain's hook or priority in place)
        or hold other rules (flushed and refilled); (2) one element batch; (3) chains
        and sets that are not Shoal's, after (2) removed what referred to them. A set of
        another type (an older layout) cannot be redeclared under its rules: the table is
        replaced whole, as a full sync does."""
        nl = await self._netlink()
        have = await asyncio.to_thread(nl.table_state)
        if have is None:
            await self._full(services)
            return [] if adopting else [f"table {T} was missing: rebuilt"]
        model = _Model.of(services)
        # What the table's structure should be, as this kernel holds it; else (no
        # throw-away namespace here) the table as last written -- which a fresh balancer
        # has not: it writes the structure instead of judging it.
        reference = await nft_scratch.reference(FAMILY, TABLE, render_prepare(model.chains))
        if reference is None:
            if adopting:
                await self._full(services)
                return []
            reference = self._written
        drift = nft_drift.compare(have, reference, table=T, chains=CHAIN_NAMES | model.chains,
                                  sets=SET_NAMES)
        if drift.other_type_sets:
            await self._full(services)
            return drift.other_type_lines()
        report = list(drift.lines)
        if drift.structure:
            try:
                await self.runner.run(render_repair(
                    missing=drift.missing_chains, recreate=drift.recreate,
                    refill=drift.refill, sets=drift.missing_sets))
            except NftError as exc:
                # Something not Shoal's still refers to a chain being recreated: the
                # table is replaced whole instead (one transaction too).
                await self._full(services)
                return [*report, f"table {T} could not be repaired in place ({exc}): "
                                 f"rewritten"]
        have_sets: dict[str, dict[bytes, bytes | None]] = {}
        for name in SET_NAMES:
            try:
                have_sets[name] = dict(await asyncio.to_thread(nl.set_elements, name))
            except nftnl.MissingError:
                have_sets[name] = {}
        # ~0.2 s of CPU at 10,000 x 10: off the event loop.
        ops, lines = await asyncio.to_thread(_element_repairs, services, have_sets)
        if ops:
            await asyncio.to_thread(nl.commit, ops)
        report += lines
        if drift.stray_chains or drift.stray_sets:
            await self.runner.run(render_removal(drift.stray_chains, drift.stray_sets))
            # An lb chain no service uses any more is Shoal's own leftover (incremental
            # changes keep a chain they no longer need; it is cheap, and may be needed
            # again): removed without calling it drift.
            report += drift.stray_lines(quiet=lambda c: LB_CHAIN.fullmatch(c) is not None)
        self._take(model)
        if adopting or drift.structure or drift.stray_chains or drift.stray_sets:
            await self._snapshot()
        return report

    async def _netlink(self) -> nftnl.NftNetlink:
        if self._nl is None:
            self._nl = await asyncio.to_thread(nftnl.NftNetlink, self._netns_path, TABLE)
        return self._nl

    async def _full(self, services: Iterable[VirtualService]) -> None:
        services = list(services)
        if self.full_sync_kind == "text":
            await self.runner.run(render_full(services))
            self.last_full_sync = "text"
            model = _Model.of(services)
        else:
            model = await self._full_netlink(services)
        self._take(model)
        await self._snapshot()

    async def _full_netlink(self, services: list[VirtualService]) -> _Model:
        """Two transactions, each atomic for traffic: (1) the skeleton and the lb chains
        the services need, rules flushed and rewritten, elements kept -- identical rules
        for an identical table; (2) one netlink batch that flushes every set and adds
        every element. Chains no element refers to any more go last. A table an older
        Shoal left with sets of another type cannot be prepared in place: it is replaced
        whole by the text script (slow, but one transaction too)."""
        chains = {lb_chain(s) for s in services if s.backends}
        try:
            await self.runner.run(render_prepare(chains))
        except NftError as exc:
            await self.runner.run(render_full(services))
            self.last_full_sync = f"text (the skeleton could not be prepared: {exc})"
            return _Model.of(services)
        nl = await self._netlink()
        elements = await asyncio.to_thread(nft_elements.encode, services)
        ops = [nftnl.SetOp("flush", name) for name in SET_NAMES]
        ops += [nftnl.SetOp("add", name, items) for name, items in elements.sets.items()]
        # Submitted now (run_in_executor starts the thread at once; a to_thread task would
        # not start before this coroutine yields)...
        commit = asyncio.get_running_loop().run_in_executor(None, nl.commit, ops)
        try:
            # ...so the model is built while the kernel takes the batch (the thread is in
            # sendmsg and recv without the GIL): at 10,000 services the model is ~0.1 s
            # of Python that would otherwise follow the kernel's ~0.2 s.
            model = _Model.of(services)
        finally:
            await commit
        self.last_full_sync = "netlink"
        stale = await asyncio.to_thread(nl.chains) - CHAIN_NAMES - chains
        if stale:
            await self.runner.run("".join(f"delete chain {T} {c}\n" for c in sorted(stale)))
        return model

    @property
    def _chains(self) -> set[str]:
        """The lb chains the table holds: those some service uses."""
        return set(self._chain_refs)

    def _take(self, model: _Model) -> None:
        """``model`` is now what the table holds."""
        self._model, self._vip_refs, self._chain_refs = model.services, model.vip_refs, \
            model.chain_refs
        self._synced = True

    async def _snapshot(self) -> None:
        """Remember the table just written (chains, rules, set declarations) as the
        kernel holds it, so repair() can tell a hand-edited chain or rule from ours
        without parsing nft's text."""
        nl = await self._netlink()
        self._written = await asyncio.to_thread(nl.table_state)

    async def _apply(self, changed: Iterable[VirtualService], gone: Iterable[ServiceKey]
                     ) -> None:
        """One transaction for all the changes; on any failure (or before the first full
        sync, when the kernel's table is unknown) rebuild the whole table instead."""
        changed, gone = list(changed), list(gone)

        def wanted() -> dict[ServiceKey, VirtualService]:
            # A copy (no re-hashing of the keys) changed in place: a comprehension over
            # the model would hash every (IPv4Address, port, protocol) key again, which
            # made one service's change cost time in proportion to all services.
            want = dict(self._model)
            for k in gone:
                want.pop(k, None)
            want.update((s.key, s) for s in changed)
            return want
        if not self._synced:
            await self._first_sync(list(wanted().values()))
            return
        chains = set(self._chains)
        refs = dict(self._vip_refs)
        lines: list[str] = []
        ops: list[nftnl.SetOp] = []
        pairs = [*((self._model[k], None) for k in gone),
                 *((self._model.get(s.key), s) for s in changed)]
        chain_refs = dict(self._chain_refs)
        for old, new in pairs:
            if self.full_sync_kind == "text":
                lines += render_change(old, new, chains=chains, vip_refs=refs)
            else:
                new_chain_lines, more = netlink_change(old, new, chains=chains, vip_refs=refs)
                lines += new_chain_lines
                ops += more
            for svc, step in ((old, -1), (new, 1)):
                if svc is not None and svc.backends:
                    chain = lb_chain(svc)
                    chain_refs[chain] = chain_refs.get(chain, 0) + step
        # A chain whose last service left goes in the same transaction, after the
        # elements that referred to it: no leftover for a restarted agent to remove.
        unused = sorted(c for c, n in chain_refs.items() if n <= 0)
        for chain in unused:
            del chain_refs[chain]
            chains.discard(chain)
        if self.full_sync_kind == "text":
            lines += [f"delete chain {T} {c}" for c in unused]
        else:
            ops += [nftnl.SetOp.delete_chain(c) for c in unused]
        try:
            # New chains first (nothing refers to them until the elements do), then the
            # elements: one transaction either way.
            if lines:
                await self.runner.run("\n".join(lines) + "\n")
            if ops:
                await asyncio.to_thread((await self._netlink()).commit, ops)
        except NftError:
            await self._full(wanted().values())
            return
        new_chains = chains ^ self._chains
        for k in gone:  # the model changed in place, as the kernel was
            self._model.pop(k, None)
        self._model.update((s.key, s) for s in changed)
        self._vip_refs = refs
        self._chain_refs = chain_refs
        if new_chains and self._written is not None:
            await self._snapshot()


def _element_repairs(services: Iterable[VirtualService],
                     have: dict[str, dict[bytes, bytes | None]]
                     ) -> tuple[list[nftnl.SetOp], list[str]]:
    """The netlink operations turning the kernel's elements ``have`` (by set: key ->
    data) into the model's, and a line per repaired service or set."""
    services = list(services)
    want = nft_elements.encode(services)
    ops: list[nftnl.SetOp] = []
    lines: list[str] = []
    owners_of: dict[str, dict[bytes, ServiceKey | ipaddress.IPv4Address]] | None = None
    for name in SET_NAMES:
        items = want.sets.get(name, [])
        expected = nft_elements.split(name, items)
        found = have.get(name, {})
        if expected == found:
            continue
        by_key = dict(zip(expected, items, strict=True))
        wrong = [k for k, d in expected.items() if k in found and found[k] != d]
        missing = [k for k in expected if k not in found]
        stray = [k for k in found if k not in expected]
        if wrong or stray:
            ops.append(nftnl.SetOp("delete", name,
                                   [nft_elements.key_only(k) for k in [*wrong, *stray]]))
        if wrong or missing:
            ops.append(nftnl.SetOp("add", name, [by_key[k] for k in [*wrong, *missing]]))
        if owners_of is None:  # only when something drifted: it costs ~0.15 s at 10,000
            owners_of = nft_elements.encode(services, owners=True).owners
        owners = owners_of.get(name, {})
        per_owner: dict[str, int] = {}
        for k in [*wrong, *missing]:
            owner = owners[k]
            label = (f"VIP {owner}" if isinstance(owner, ipaddress.IPv4Address)
                     else VirtualService(owner[0], owner[1], owner[2], ()).describe())
            per_owner[label] = per_owner.get(label, 0) + 1
        what = {"svc": "dispatch", "svca": "dispatch", "np": "dispatch", "vips": "entry"}
        noun = what.get(name, "backends")
        if len(per_owner) > REPORT_LINES:  # mass drift: one line, not 10,000
            shown = ", ".join(sorted(per_owner)[:3])
            lines.append(f"restored {sum(per_owner.values())} {noun} element(s) of "
                         f"{len(per_owner)} services in set {name} ({shown}, ...)")
            per_owner = {}
        for label, count in sorted(per_owner.items()):
            lines.append(f"restored {count} {noun} of {label} in set {name}"
                         if noun == "backends" else f"restored the {noun} of {label} "
                         f"in set {name}")
        if stray:
            lines.append(_stray_line(name, stray, found))
    return ops, lines


def _stray_line(name: str, stray: list[bytes], found: dict[bytes, bytes | None]) -> str:
    layout = nftnl.layout_of(name)
    shown = lb_mod.some(stray, describe=lambda k: layout.describe(k, found[k]))
    return f"removed {len(stray)} stray element(s) from set {name}: {shown}"
