"""How a table's structure differs from a reference, and how that reads (pure).

Shared by the two tables Shoal owns -- the nftables balancer's ``ip shoal`` and the IPVS
balancer's companion ``ip shoal_ipvs`` -- so both judge drift the same way and report it
in the same words. The kernel side comes from :meth:`shoal.net.nftnl.NftNetlink.
table_state`, the reference from :mod:`shoal.net.nft_scratch` (or a snapshot taken after
a write): both are dumps of one kernel, compared as bytes, so nothing here parses nft.
What to do about each difference stays with the table's owner.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from shoal.net.nftnl import TableState


@dataclass
class StructureDrift:
    """One table's chains and sets against the reference: by kind of difference."""

    table: str  # "ip shoal": for the report lines
    missing_chains: list[str] = field(default_factory=list)
    recreate: list[str] = field(default_factory=list)  # another hook, priority or policy
    refill: list[str] = field(default_factory=list)  # other rules
    missing_sets: list[str] = field(default_factory=list)
    other_type_sets: list[str] = field(default_factory=list)
    stray_chains: list[str] = field(default_factory=list)
    stray_sets: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # chains and missing sets, in order

    @property
    def structure(self) -> bool:
        """Something to declare or rewrite (not counting strangers to remove)."""
        return bool(self.missing_chains or self.recreate or self.refill or self.missing_sets
                     or self.other_type_sets)

    def other_type_lines(self) -> list[str]:
        return [f"set {name} of table {self.table} was declared otherwise: table replaced"
                for name in self.other_type_sets]

    def stray_lines(self, quiet: Callable[[str], bool] = lambda _: False) -> list[str]:
        """Strangers removed; ``quiet`` chains (the owner's own leftovers) go unsaid."""
        return ([f"chain {c} is not Shoal's: removed from table {self.table}"
                 for c in self.stray_chains if not quiet(c)]
                + [f"set {s} is not Shoal's: removed from table {self.table}"
                   for s in self.stray_sets])


def compare(have: TableState, want: TableState | None, *, table: str,
            chains: Collection[str], sets: Collection[str]) -> StructureDrift:
    """``have`` (the kernel) against ``want`` (the reference; None: only names are
    compared) for a table that should hold exactly ``chains`` and ``sets``. A chain or
    set the reference lacks is judged by its name alone."""
    drift = StructureDrift(table)
    for name in sorted(chains):
        if name not in have.chains:
            drift.lines.append(f"chain {name} of table {table} was missing: restored")
            drift.missing_chains.append(name)
        elif (want is not None and name in want.chains
              and have.chains[name] != want.chains[name]):
            drift.lines.append(f"chain {name} of table {table} differed "
                               f"({have.chains[name].describe()}; Shoal's: "
                               f"{want.chains[name].describe()}): recreated")
            drift.recreate.append(name)
        elif (want is not None and name in want.rules
              and have.rules.get(name, []) != want.rules[name]):
            drift.lines.append(f"rules of chain {name} of table {table} differed: rewritten")
            drift.refill.append(name)
    for name in sets:
        if name not in have.sets:
            drift.lines.append(f"set {name} of table {table} was missing: restored")
            drift.missing_sets.append(name)
        elif want is not None and name in want.sets and have.sets[name] != want.sets[name]:
            drift.other_type_sets.append(name)
    drift.stray_chains = sorted(set(have.chains) - set(chains))
    drift.stray_sets = sorted(set(have.sets) - set(sets))
    return drift
