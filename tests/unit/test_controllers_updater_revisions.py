"""Revision history (``controllers/updater/revisions.py``): recording, kubectl's
renumbering, the limit, and picking a rollback target."""

from __future__ import annotations

import pytest

from shoal.controllers.updater import revisions as rv

A, B, C = ({"template": {"image": f"x:{n}"}} for n in (1, 2, 3))


def numbers(history: list[rv.Revision]) -> list[tuple[int, str]]:
    return [(r["revision"], r["spec"]["template"]["image"]) for r in history]


def test_each_new_spec_is_the_next_revision_and_the_same_spec_is_not_recorded_twice() -> None:
    h, cur = rv.record([], A, 1, "create", "t1")
    assert cur == 1 and h[0]["changeCause"] == "create" and h[0]["generation"] == 1
    h, cur = rv.record(h, B, 2, "update", "t2")
    assert cur == 2 and numbers(h) == [(1, "x:1"), (2, "x:2")]
    same, cur = rv.record(h, B, 3, "scale", "t3")  # a replicas-only change
    assert same == h and cur == 2


def test_an_older_spec_again_is_renumbered_to_the_newest() -> None:
    h, _ = rv.record([], A, 1, None, "t1")
    h, _ = rv.record(h, B, 2, None, "t2")
    h, cur = rv.record(h, A, 3, "rollback to revision 1", "t3")
    assert cur == 3 and numbers(h) == [(2, "x:2"), (3, "x:1")]
    assert h[-1]["changeCause"] == "rollback to revision 1" and h[-1]["generation"] == 3


def test_history_keeps_the_limit_newest() -> None:
    h: list[rv.Revision] = []
    for n in range(1, 6):
        h, cur = rv.record(h, {"template": {"image": f"y:{n}"}}, n, None, "t", limit=3)
    assert [r["revision"] for r in h] == [3, 4, 5] and cur == 5
    assert rv.history_limit(None) == 10 and rv.history_limit(0) == 10
    assert rv.history_limit(2) == 2


def test_rollback_target_previous_or_a_number() -> None:
    h, _ = rv.record([], A, 1, None, "t1")
    h, _ = rv.record(h, B, 2, None, "t2")
    h, cur = rv.record(h, C, 3, None, "t3")
    assert rv.target(h, cur, "previous")["revision"] == 2
    assert rv.target(h, cur, "1")["spec"] == A
    with pytest.raises(rv.RollbackError, match="revision 7 is not in the history; "
                                               "revisions kept: 1, 2, 3"):
        rv.target(h, cur, "7")
    with pytest.raises(rv.RollbackError, match="current one"):
        rv.target(h, cur, "3")
    with pytest.raises(rv.RollbackError, match="neither 'previous' nor"):
        rv.target(h, cur, "yesterday")
    with pytest.raises(rv.RollbackError, match="no revision before"):
        rv.target(h[:1], 1, "previous")


def test_apply_to_keeps_everything_but_the_recorded_sections() -> None:
    spec = {"replicas": 5, "template": {"image": "x:3"}, "endpoint": {"mode": "dnsrr"},
            "placement": {"constraints": ["a==b"], "rebalance": {"enabled": True}},
            "updateConfig": {"parallelism": 2}}
    rv.apply_to(spec, {"spec": A})
    assert spec == {"replicas": 5, "template": {"image": "x:1"},
                    "placement": {"rebalance": {"enabled": True}},
                    "updateConfig": {"parallelism": 2}}
