"""shoal.net.nft_drift: a table's structure against a reference, and the report lines."""

from __future__ import annotations

from shoal.net.nft_drift import compare
from shoal.net.nftnl import ChainDecl, TableState

BASE = ChainDecl("filter", 0, -300, 1)


def reference() -> TableState:
    return TableState(chains={"hooked": BASE, "plain": ChainDecl(), "other": ChainDecl()},
                      rules={"hooked": [b"r1"], "plain": [b"r2", b"r3"], "other": []},
                      sets={"s": b"decl", "m": b"mapdecl"})


def test_the_same_table_is_no_drift() -> None:
    drift = compare(reference(), reference(), table="ip t", chains=["hooked", "plain", "other"],
                    sets=["s", "m"])
    assert not drift.structure and drift.lines == [] and drift.stray_lines() == []


def test_each_kind_of_difference_is_named_once() -> None:
    have = TableState(
        chains={"hooked": ChainDecl("filter", 0, -200, 1), "plain": ChainDecl(),
                "mine": ChainDecl(), "lb_tcp_3": ChainDecl()},
        rules={"hooked": [b"r1"], "plain": [b"r2"], "mine": [], "lb_tcp_3": []},
        sets={"s": b"other", "extra": b"x"})
    drift = compare(have, reference(), table="ip t", chains=["hooked", "plain", "other"],
                    sets=["s", "m"])
    assert (drift.recreate, drift.refill, drift.missing_chains) == (
        ["hooked"], ["plain"], ["other"])
    assert (drift.missing_sets, drift.other_type_sets) == (["m"], ["s"])
    assert drift.lines == [
        "chain hooked of table ip t differed (type filter hook prerouting priority -200 "
        "policy accept; Shoal's: type filter hook prerouting priority -300 policy accept): "
        "recreated",
        "chain other of table ip t was missing: restored",
        "rules of chain plain of table ip t differed: rewritten",
        "set m of table ip t was missing: restored"]
    assert drift.other_type_lines() == [
        "set s of table ip t was declared otherwise: table replaced"]
    assert drift.stray_lines(quiet=lambda c: c.startswith("lb_")) == [
        "chain mine is not Shoal's: removed from table ip t",
        "set extra is not Shoal's: removed from table ip t"]


def test_without_a_reference_only_names_count() -> None:
    have = TableState(chains={"hooked": ChainDecl()}, rules={"hooked": [b"x"]}, sets={})
    drift = compare(have, None, table="ip t", chains=["hooked"], sets=["s"])
    assert drift.lines == ["set s of table ip t was missing: restored"]
