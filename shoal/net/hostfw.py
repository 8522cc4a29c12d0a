"""Letting Shoal's own traffic through a host firewall that Shoal does not own.

A default Docker install sets the filter FORWARD policy to DROP and consults DOCKER-USER
first; br_netfilter (``bridge-nf-call-iptables=1``) makes even bridged frames between two
ports of one Shoal bridge traverse that FORWARD chain. On such a host the overlay, the
service VIPs and the routing mesh time out while tasks show running. This module owns
the few ACCEPT rules that let exactly Shoal's traffic through, and nothing else:

* iptables, in whichever of the two implementations holds a ``filter`` table --
  iptables-nft (table ``ip filter`` in nftables) and iptables-legacy (x_tables), often
  both on one host. In nftables a packet must be accepted by *every* base chain of a
  hook, so an accept in Shoal's own table cannot outvote Docker's drop: the rules go into
  the chains the drop guards. FORWARD: into ``DOCKER-USER`` when it exists (Docker
  consults it before anything of its own and never flushes it), else the top of
  ``FORWARD``: ``-i shb-+`` and ``-o shb-+`` (the tasks' bridges, bridged or routed).
  INPUT, at the top: ``-i shb-+`` (DNS on the node's address, IPVS VIPs), VXLAN
  (UDP 4789 to the node's underlay address) and packets carrying the balancer's mark
  (IPVS published ports are delivered locally).
* native nftables base chains (``inet filter`` from nftables.conf, say) on the input or
  forward hook whose policy is drop: the same rules in nft syntax, inserted at the top.

Every rule carries the comment ``shoal``; that comment is how our rules are found again,
and only rules carrying it are ever deleted. Nothing is flushed, no policy is changed,
no chain is created, and a table that does not exist is not created (reading the legacy
tables would instantiate them, so ``/proc/net/ip_tables_names`` is consulted first).

``ensure`` is idempotent and cheap when nothing is missing (one listing per
implementation); the dataplane calls it on its passes, so rules Docker or an admin
removed (Docker re-creating its chains on restart) come back. ``remove`` deletes exactly
ours; the dataplane calls it when the node hosts nothing any more, ``swctl down`` for
the host namespace. A failure (no permission, no iptables binary for a table that
exists) is returned as a problem, which the dataplane reports on the Node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import shlex
import shutil
from typing import Any

from shoal.net import netns as netns_mod

COMMENT = "shoal"
BRIDGES_IPT = "shb-+"
BRIDGES_NFT = '"shb-*"'
VXLAN_PORT = 4789
MARK = 0x10000000  # the balancers' mark bit (lb_nftables.MASQ_MARK, ipvs_netfilter)
OWN_TABLES = {("ip", "shoal"), ("ip", "shoal_ipvs")}
IPT_TABLE_NAMES = "/proc/thread-self/net/ip_tables_names"


@dataclasses.dataclass(frozen=True)
class Rules:
    """Our rules for one node, in iptables-save syntax (what follows ``-A CHAIN``)."""

    forward: tuple[str, ...]
    input: tuple[str, ...]


def rules(underlay: str | None) -> Rules:
    c = f"-m comment --comment {COMMENT} -j ACCEPT"
    dst = f"-d {underlay}/32 " if underlay else ""
    return Rules(
        forward=(f"-i {BRIDGES_IPT} {c}", f"-o {BRIDGES_IPT} {c}"),
        input=(f"-i {BRIDGES_IPT} {c}", f"{dst}-p udp -m udp --dport {VXLAN_PORT} {c}",
               f"-m mark --mark {MARK:#x}/{MARK:#x} {c}"))


def nft_rules(hook: str, underlay: str | None) -> list[str]:
    """The same rules for a native nftables chain of ``hook`` (input or forward)."""
    c = f'comment "{COMMENT}"'
    if hook == "forward":
        return [f"iifname {BRIDGES_NFT} accept {c}", f"oifname {BRIDGES_NFT} accept {c}"]
    dst = f"ip daddr {underlay} " if underlay else ""
    return [f"iifname {BRIDGES_NFT} accept {c}",
            f"{dst}udp dport {VXLAN_PORT} accept {c}",
            f"meta mark & {MARK:#x} == {MARK:#x} accept {c}"]


def bridge_rules(bridge: str) -> Rules:
    """Frames bridged between two ports of ``bridge`` (``swctl up --nodes``' underlay
    bridge in the host namespace: VXLAN between its node namespaces), nothing else."""
    return Rules(forward=(f"-i {bridge} -o {bridge} -m comment --comment {COMMENT} "
                          "-j ACCEPT",), input=())


def nft_bridge_rules(hook: str, bridge: str) -> list[str]:
    """:func:`bridge_rules` for a native nftables chain of ``hook``."""
    if hook != "forward":
        return []
    return [f'iifname "{bridge}" oifname "{bridge}" accept comment "{COMMENT}"']


# ---- iptables-save parsing and the changes it implies (pure) ----------------------------

@dataclasses.dataclass
class Saved:
    """The filter table of one ``iptables-save -t filter``."""

    chains: dict[str, str]  # name -> policy ("-" for user chains)
    rules: list[tuple[str, str]]  # (chain, rule as printed after "-A CHAIN ")


def parse_save(text: str) -> Saved:
    saved = Saved({}, [])
    in_filter = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_filter = line[1:].strip() == "filter"
        elif not in_filter or line.startswith("#"):
            continue
        elif line.startswith(":"):
            name, policy = [*line[1:].split(), "-"][:2]
            saved.chains[name] = policy
        elif line.startswith("-A "):
            _, chain, rest = line.split(" ", 2)
            saved.rules.append((chain, rest))
    return saved


def is_ours(rule: str) -> bool:
    tokens = shlex.split(rule)
    return any(a == "--comment" and b == COMMENT for a, b in itertools.pairwise(tokens))


def forward_chain(saved: Saved) -> str:
    return "DOCKER-USER" if "DOCKER-USER" in saved.chains else "FORWARD"


def ensure_commands(saved: Saved, want: Rules) -> list[str]:
    """``iptables-restore --noflush`` lines (without ``*filter``/``COMMIT``) that make
    ``saved`` hold exactly our ``want`` rules: stale ones of ours deleted, missing ones
    inserted at the top of their chain, in order; present ones left where they are."""
    fwd = forward_chain(saved)
    wanted = {(fwd, r) for r in want.forward} | {("INPUT", r) for r in want.input}
    ours = [(chain, r) for chain, r in saved.rules if is_ours(r)]
    lines = [f"-D {chain} {r}" for chain, r in ours if (chain, r) not in wanted]
    have = set(ours)
    for chain, chain_rules in ((fwd, want.forward), ("INPUT", want.input)):
        if chain not in saved.chains:
            continue
        missing = [r for r in chain_rules if (chain, r) not in have]
        lines += [f"-I {chain} 1 {r}" for r in reversed(missing)]
    return lines


def remove_commands(saved: Saved) -> list[str]:
    return [f"-D {chain} {r}" for chain, r in saved.rules if is_ours(r)]


def drop_chains(listing: dict[str, Any]) -> list[dict[str, Any]]:
    """Native nftables base chains on input/forward with policy drop, from ``nft -j list
    chains``; iptables-nft's ``ip filter`` and Shoal's own tables excluded."""
    out = []
    for item in listing.get("nftables", []):
        chain = item.get("chain")
        if not chain or chain.get("hook") not in ("input", "forward"):
            continue
        if chain.get("family") not in ("ip", "inet") or chain.get("policy") != "drop":
            continue
        key = (chain["family"], chain["table"])
        if key in OWN_TABLES or key == ("ip", "filter"):
            continue
        out.append(chain)
    return out


def has_ipt_nft_filter(listing: dict[str, Any]) -> bool:
    return any(item.get("chain", {}).get("family") == "ip"
               and item["chain"].get("table") == "filter" for item in listing.get(
                   "nftables", []) if "chain" in item)


# ---- applying ----------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    changes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)


class HostFirewall:
    """Our rules in the firewall of one namespace (None: the agent's own): a node's
    (its tasks' bridges, DNS, VXLAN, marked packets), or with ``bridge`` only the frames
    bridged across that one bridge (:func:`bridge_rules`)."""

    def __init__(self, netns: str | None = None, underlay: str | None = None, *,
                 bridge: str | None = None) -> None:
        self.netns = netns
        self.want = rules(underlay) if bridge is None else bridge_rules(bridge)
        self.underlay = underlay
        self.bridge = bridge

    def _nft_want(self, hook: str) -> list[str]:
        if self.bridge is not None:
            return nft_bridge_rules(hook, self.bridge)
        return nft_rules(hook, self.underlay)

    async def ensure(self) -> Report:
        return await self._pass(remove=False)

    async def remove(self) -> Report:
        return await self._pass(remove=True)

    async def _pass(self, *, remove: bool) -> Report:
        report = Report()
        listing = await self._nft_listing(report)
        backends: list[str] = []
        if listing is not None and has_ipt_nft_filter(listing):
            backends.append("nft")
        if await self._legacy_filter():
            backends.append("legacy")
        for backend in backends:
            await self._iptables(backend, remove, report)
        for chain in drop_chains(listing or {}):
            await self._native(chain, remove, report)
        return report

    # --- iptables (nft or legacy) ---

    async def _iptables(self, backend: str, remove: bool, report: Report) -> None:
        save = shutil.which(f"iptables-{backend}-save")
        restore = shutil.which(f"iptables-{backend}-restore")
        if save is None or restore is None:
            report.problems.append(f"an iptables-{backend} filter table exists but "
                                   f"iptables-{backend}-save/-restore are not installed")
            return
        try:
            saved = parse_save(await self._run(save, "-t", "filter"))
            lines = remove_commands(saved) if remove else ensure_commands(saved, self.want)
            if lines:
                await self._run(restore, "--noflush", "-w",
                                stdin="*filter\n" + "\n".join(lines) + "\nCOMMIT\n")
                report.changes += [f"iptables-{backend}: {line}" for line in lines]
        except (OSError, RuntimeError) as exc:
            report.problems.append(f"cannot add Shoal's rules to iptables-{backend} "
                                   f"(filter FORWARD/INPUT): {exc}")

    async def _legacy_filter(self) -> bool:
        """Whether x_tables holds a filter table here (reading it would create one)."""
        def read() -> str:
            try:
                with open(IPT_TABLE_NAMES) as f:
                    return f.read()
            except OSError:
                return ""
        path = netns_mod.path(self.netns) if self.netns is not None else None
        names = await asyncio.to_thread(netns_mod.run_in, path, read)
        return "filter" in names.split()

    # --- native nftables ---

    async def _nft_listing(self, report: Report) -> dict[str, Any] | None:
        nft = shutil.which("nft")
        if nft is None:
            return None
        try:
            data: dict[str, Any] = json.loads(await self._run(nft, "-j", "list", "chains"))
            return data
        except (OSError, RuntimeError, ValueError) as exc:
            report.problems.append(f"cannot read the nftables ruleset: {exc}")
            return None

    async def _native(self, chain: dict[str, Any], remove: bool, report: Report) -> None:
        nft = shutil.which("nft")
        assert nft is not None
        where = f"{chain['family']} {chain['table']} {chain['name']}"
        try:
            listed = json.loads(await self._run(nft, "-j", "-a", "list", "chain",
                                                *where.split()))
            ours = [item["rule"] for item in listed.get("nftables", [])
                    if "rule" in item and item["rule"].get("comment") == COMMENT]
            want = [] if remove else self._nft_want(chain["hook"])
            if len(ours) == len(want):
                return  # ours are there (rules are fixed per node; count is enough)
            script = [f"delete rule {where} handle {r['handle']}" for r in ours]
            script += [f"insert rule {where} {r}" for r in reversed(want)]
            await self._run(nft, "-f", "-", stdin="\n".join(script) + "\n")
            report.changes += [f"nft {where}: {line}" for line in script]
        except (OSError, RuntimeError, ValueError) as exc:
            report.problems.append(f"cannot add Shoal's rules to nftables chain {where} "
                                   f"(policy drop): {exc}")

    async def _run(self, *argv: str, stdin: str | None = None) -> str:
        return await netns_mod.run_command(self.netns, *argv, stdin=stdin)
