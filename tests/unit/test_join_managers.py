"""shoal/join/managers.py: MANAGER STATUS and the quorum edge, without etcd."""

from __future__ import annotations

import pytest

from shoal.join import managers
from shoal.join.managers import Member, MemberHealth

M = [Member(1, "m1", ("https://a:2380",)), Member(2, "m2", ("https://b:2380",)),
     Member(3, "m3", ("https://c:2380",))]


def _up(*ids: int, leader: int = 1) -> dict[int, MemberHealth | None]:
    return {m.id: (MemberHealth(m.id, leader) if m.id in ids else None) for m in M}


def test_manager_status_names_the_leader_the_answering_members_agree_on() -> None:
    assert managers.manager_status(M, _up(1, 2, 3, leader=2)) == {
        "m1": "Reachable", "m2": "Leader", "m3": "Reachable"}
    # The leader died: the survivors still name it until they elect another.
    assert managers.manager_status(M, _up(1, 3, leader=2)) == {
        "m1": "Reachable", "m2": "Unreachable", "m3": "Reachable"}


def test_demote_refused_at_the_quorum_edge() -> None:
    assert managers.check_removal(M, _up(1, 2, 3), "m3") == M[2]
    assert managers.check_removal(M, _up(1, 2, 3), "nobody") is None
    # m3 down: demoting m2 leaves m1 and m3, of which only m1 answers.
    with pytest.raises(managers.QuorumError,
                       match="demoting m2 would leave 1 of 2 managers reachable: quorum lost"):
        managers.check_removal(M, _up(1, 2), "m2")
    # Removing the unreachable one itself is what heals the cluster: allowed.
    assert managers.check_removal(M, _up(1, 2), "m3") == M[2]
    with pytest.raises(managers.QuorumError, match="it is the last one"):
        managers.check_removal(M[:1], _up(1), "m1", verb="leaving")


def test_initial_cluster_lists_every_member_and_the_new_one_by_name() -> None:
    added = [*M[:2], Member(9, "", ("https://d:2380",))]
    assert managers.initial_cluster(added, "m4", "https://d:2380") == (
        "m1=https://a:2380,m2=https://b:2380,m4=https://d:2380")
    assert managers.initial_cluster(M[:1], "m2", "https://b:2380") == (
        "m1=https://a:2380,m2=https://b:2380")
