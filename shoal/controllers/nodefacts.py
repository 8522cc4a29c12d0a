"""What a node is, as placement constraints read it, and whether a node satisfies them.

The grammar (``shoal.crds.constraints``) says what a constraint *means*; this module holds
the other half, evaluating a parsed constraint against a node. It sits beside
``common.py`` rather than inside the scheduler because two controllers must agree on it:
the scheduler filters nodes with it, and the global orchestrator decides with it which
nodes deserve a task (as does ``swctl converge``, which predicts the orchestrator). Were
each to hold a copy, a global service could be given a task on a node its own scheduler
refuses.

Nodes are matched through ``NodeFacts``, a per-node snapshot of the lower-cased values the
keys read, so a batch that checks thousands of (node, constraint) pairs normalises each
node once. ``!=`` on a fact the node does not have matches, as in Swarm.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import zlib
from collections.abc import Iterable, Mapping

import structlog

from shoal.crds.constraints import (
    ARCH,
    ENGINE_LABELS,
    HOSTNAME,
    ID,
    IP,
    NODE_LABELS,
    OS,
    ROLE,
    Constraint,
    normalize_arch,
)
from shoal.crds.resource import Resource

log = structlog.get_logger("shoal.controllers.nodefacts")


@dataclasses.dataclass(frozen=True, slots=True)
class NodeFacts:
    """What constraint keys read from one node, normalised once (values lower-cased)."""

    name: str
    id: str
    hostname: str
    role: str
    os: str
    arch: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    labels: Mapping[str, str]
    engine_labels: Mapping[str, str]
    # Original-case label values, for spread groups (Swarm groups by exact value).
    raw_labels: Mapping[str, str]
    raw_engine_labels: Mapping[str, str]

    @classmethod
    def of(cls, node: Resource) -> NodeFacts:
        status = node.status
        platform = status.get("platform") or {}
        address = str(status.get("address") or "").strip()
        return cls(
            name=node.metadata.name,
            id=(node.metadata.uid or "").lower(),
            # The node's name is what `swctl node ls` shows and what users type; hollow
            # nodes share their host's real hostname, so status.hostname cannot identify them.
            hostname=node.metadata.name.lower(),
            role=str(node.spec.get("role") or "worker").lower(),
            os=str(platform.get("os") or "").lower(),
            arch=normalize_arch(str(platform.get("architecture") or "")),
            ip=_parse_address(address),
            labels={k: str(v).lower() for k, v in node.metadata.labels.items()},
            engine_labels={k: str(v).lower()
                           for k, v in (status.get("engineLabels") or {}).items()},
            raw_labels=dict(node.metadata.labels),
            raw_engine_labels={k: str(v) for k, v in (status.get("engineLabels") or {}).items()},
        )


def _parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address:
        return None
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        pass
    # Tolerate "10.0.0.5:2377" or "10.0.0.5/24" from agents that report an endpoint or an
    # interface address rather than a bare address.
    for candidate in (address.rsplit(":", 1)[0].strip("[]"), address.split("/", 1)[0]):
        try:
            return ipaddress.ip_address(candidate)
        except ValueError:
            continue
    return None


def matches(constraint: Constraint, facts: NodeFacts) -> bool:
    """Whether the node described by ``facts`` satisfies ``constraint``."""
    if constraint.key == IP:
        network = constraint.network
        inside = (facts.ip is not None and network is not None
                  and facts.ip.version == network.version and facts.ip in network)
        return inside if constraint.op == "==" else not inside
    actual = attribute(facts, constraint.key, constraint.label)
    equal = actual is not None and actual == constraint.want
    # A missing attribute never equals anything, so "!=" matches: Swarm's behaviour.
    return equal if constraint.op == "==" else not equal


def attribute(facts: NodeFacts, key: str, label: str = "") -> str | None:
    """The lower-cased value ``key`` reads from a node, or None when the node lacks it."""
    if key == ID:
        return facts.id or None
    if key == HOSTNAME:
        return facts.hostname
    if key == ROLE:
        return facts.role
    if key == OS:
        return facts.os or None
    if key == ARCH:
        return facts.arch or None
    if key == IP:
        return str(facts.ip) if facts.ip is not None else None
    if key.startswith(NODE_LABELS):
        return facts.labels.get(label or key[len(NODE_LABELS):])
    if key.startswith(ENGINE_LABELS):
        return facts.engine_labels.get(label or key[len(ENGINE_LABELS):])
    return None


def spread_value(facts: NodeFacts, descriptor: str) -> str | None:
    """The group a node falls in for ``spread: descriptor`` (exact case; None = no label)."""
    if descriptor.startswith(NODE_LABELS):
        return facts.raw_labels.get(descriptor[len(NODE_LABELS):])
    if descriptor.startswith(ENGINE_LABELS):
        return facts.raw_engine_labels.get(descriptor[len(ENGINE_LABELS):])
    return attribute(facts, descriptor)


def spread_turn(namespace: str, service: str) -> int:
    """How far a service rotates the order in which equally loaded spread groups take
    its next task: sibling groups sorted by value ("no label" last) are taken from
    position ``turn % siblings`` on. Deterministic, yet the odd task of a group (7
    replicas over 3 zones) does not land in the same zone for every service. The
    scheduler places by it and rebalancing predicts with it, so both live here."""
    return zlib.crc32(f"{namespace}/{service}".encode())


def match_all(constraints: Iterable[Constraint], facts: NodeFacts) -> bool:
    """Every constraint holds on the node (Swarm ANDs them)."""
    return all(matches(c, facts) for c in constraints)


def platforms_of(placement: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """``placement.platforms`` as (os, arch) pairs, lower-cased and normalised; empty
    strings match anything, an empty tuple means any platform. Unreadable entries are
    skipped (admission refuses them)."""
    entries = placement.get("platforms")
    return tuple(
        (str(p.get("os") or "").lower(), normalize_arch(str(p.get("architecture") or "")))
        for p in (entries if isinstance(entries, list) else ()) if isinstance(p, dict))


def matches_platforms(platforms: Iterable[tuple[str, str]], facts: NodeFacts) -> bool:
    """The node runs one of ``platforms`` (from ``platforms_of``; none: any platform)."""
    wanted = tuple(platforms)
    return not wanted or any((not os or os == facts.os) and (not arch or arch == facts.arch)
                             for os, arch in wanted)


# node name -> (resourceVersion, readable): reading a node's facts costs ~15 µs, and a
# 1,000-node cluster would pay it 1,000 times per service reconciled.
_readable_cache: dict[str, tuple[str, bool]] = {}


def readable_nodes(nodes: Iterable[Resource]) -> list[Resource]:
    """The nodes whose facts can be read. One with a garbage status is left out — logged
    once per version of it — by the orchestrator (as if gone) and by the scheduler (never
    placed on) alike: both must agree on which nodes exist."""
    out = []
    for node in nodes:
        name, version = node.metadata.name, node.metadata.resourceVersion
        known = _readable_cache.get(name)
        if known is None or known[0] != version:
            try:
                NodeFacts.of(node)
                known = (version, True)
            except Exception as exc:
                log.warning("node unreadable; left out until it is fixed", key=node.ref,
                            error=str(exc))
                known = (version, False)
            _readable_cache[name] = known
        if known[1]:
            out.append(node)
    return out
