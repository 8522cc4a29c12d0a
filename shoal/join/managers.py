"""Manager membership rules, pure: quorum checks and docker's MANAGER STATUS column.

What it owns: the decisions ``swctl node demote``, ``node rm``, ``leave`` and ``node ls``
take from etcd's member list and each member's status, kept apart from the calls that
fetch them so the rules are tested without a cluster. A manager *is* an etcd member here
(its member name is its node name), so the raft quorum of etcd is the cluster's quorum,
exactly as Swarm's managers are its raft members.

Why refuse rather than warn: removing a member when the remaining reachable members are
fewer than the new cluster's quorum leaves a cluster that can neither write nor heal
itself without ``--force-new-cluster`` surgery; Docker refuses the same ("can't remove
member from the raft: this would result in a loss of quorum").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Final

LEADER: Final = "Leader"
REACHABLE: Final = "Reachable"
UNREACHABLE: Final = "Unreachable"


@dataclasses.dataclass(frozen=True)
class Member:
    """One etcd member as the membership rules see it."""

    id: int
    name: str  # the node name ("" for a member added but never started)
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MemberHealth:
    """What a member said of itself (``status``), or None when it did not answer."""

    member_id: int
    leader_id: int


def quorum(size: int) -> int:
    """Members that must agree for a cluster of ``size`` to write: a majority."""
    return size // 2 + 1


def manager_status(members: Sequence[Member],
                   health: Mapping[int, MemberHealth | None]) -> dict[str, str]:
    """MANAGER STATUS per node name: Leader, Reachable or Unreachable.

    The leader is the one the answering members agree on (a member's own view may lag);
    a member that did not answer is Unreachable even if others still call it leader.
    """
    answered = [h for h in health.values() if h is not None]
    votes: dict[int, int] = {}
    for h in answered:
        if h.leader_id:
            votes[h.leader_id] = votes.get(h.leader_id, 0) + 1
    leader = max(votes, key=lambda k: votes[k]) if votes else 0
    out: dict[str, str] = {}
    for m in members:
        if not m.name:
            continue
        if health.get(m.id) is None:
            out[m.name] = UNREACHABLE
        else:
            out[m.name] = LEADER if m.id == leader else REACHABLE
    return out


class QuorumError(Exception):
    """Removing a manager would leave the cluster unable to write."""


def check_removal(members: Sequence[Member], health: Mapping[int, MemberHealth | None],
                  name: str, verb: str = "demoting") -> Member | None:
    """The member of node ``name`` if it may be removed; None if ``name`` is no member.

    Refused when it is the last member, or when the members left that answer would be
    fewer than the smaller cluster's quorum.
    """
    target = next((m for m in members if m.name == name), None)
    if target is None:
        return None
    rest = [m for m in members if m.id != target.id]
    if not rest:
        raise QuorumError(f"{verb} {name} would leave the cluster without a manager: it is "
                          "the last one (promote another node first, or `swctl leave "
                          "--force` on it to dissolve the cluster)")
    reachable = sum(1 for m in rest if health.get(m.id) is not None)
    need = quorum(len(rest))
    if reachable < need:
        down = sorted(m.name or f"{m.id:x}" for m in rest if health.get(m.id) is None)
        raise QuorumError(
            f"{verb} {name} would leave {reachable} of {len(rest)} managers reachable: "
            f"quorum lost (a cluster of {len(rest)} managers needs {need}); bring "
            f"{', '.join(down)} back or remove {'it' if len(down) == 1 else 'them'} "
            "first")
    return target


def initial_cluster(members: Sequence[Member], new_name: str, new_peer_url: str) -> str:
    """etcd's ``--initial-cluster`` for a member joining ``members`` as ``new_name``.

    etcd compares it with the live member list (same count, same URLs), so every member
    is listed, the new one under its name; another member added but never started has
    no name yet and is listed as ``=URL``, as ``etcdctl member add`` prints it.
    """
    parts: list[str] = []
    for m in members:
        name = new_name if new_peer_url in m.peer_urls else m.name
        parts.extend(f"{name}={url}" for url in m.peer_urls)
    if not any(new_peer_url in m.peer_urls for m in members):
        parts.append(f"{new_name}={new_peer_url}")
    return ",".join(parts)
