"""Placement constraints: parsing ``node.labels.zone==a`` and matching them against nodes.

Swarm's constraint language, which users already write: keys ``node.id``,
``node.hostname``, ``node.ip`` (an address or a CIDR), ``node.role``,
``node.platform.os``, ``node.platform.arch``, ``node.labels.<k>`` and
``engine.labels.<k>``; operators ``==`` and ``!=``; values compared case-insensitively;
every constraint of a service must hold. ``!=`` on a label the node does not have
matches, as in Swarm. Both the scheduler (node filter) and the global orchestrator (which
nodes deserve a task) use this module, and the validator can call ``parse_constraints``
to reject a bad constraint at apply time instead of leaving tasks pending.

Nodes are matched through ``NodeFacts``, a per-node snapshot of the lower-cased values the
keys read, so a batch that checks thousands of (node, constraint) pairs normalises each
node once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import structlog

from shoal.crds.resource import Resource

log = structlog.get_logger("shoal.controllers.scheduler.constraints")

ID: Final = "node.id"
HOSTNAME: Final = "node.hostname"
IP: Final = "node.ip"
ROLE: Final = "node.role"
OS: Final = "node.platform.os"
ARCH: Final = "node.platform.arch"
NODE_LABELS: Final = "node.labels."
ENGINE_LABELS: Final = "engine.labels."
KEYS: Final = (ID, HOSTNAME, IP, ROLE, OS, ARCH, NODE_LABELS + "<key>", ENGINE_LABELS + "<key>")

# Architecture spellings differ between the kernel (uname: x86_64, aarch64) and Go/Docker
# (amd64, arm64); agents report whichever their platform library gives. Normalising both
# sides means "node.platform.arch==x86_64" and "==amd64" select the same nodes.
_ARCH_ALIASES: Final[dict[str, str]] = {
    "x86_64": "amd64", "x86-64": "amd64", "x64": "amd64",
    "aarch64": "arm64", "armv8": "arm64", "armv8l": "arm64",
    "armv7l": "arm", "armv7": "arm", "armhf": "arm",
    "i386": "386", "i686": "386", "x86": "386",
}

_EXPR_RE = re.compile(r"^\s*(?P<key>[^=!\s]+)\s*(?P<op>==|!=)\s*(?P<value>.*?)\s*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
# Values may not contain operator characters: they would make "a==b==c" ambiguous, and
# Swarm reserves them for future operators.
_VALUE_RE = re.compile(r"^[^=!<>~]+$")


class ConstraintError(ValueError):
    """A constraint that cannot be parsed; the message says what would work."""


def normalize_arch(arch: str) -> str:
    arch = arch.strip().lower()
    return _ARCH_ALIASES.get(arch, arch)


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


@dataclasses.dataclass(frozen=True, slots=True)
class Constraint:
    """One parsed ``key op value`` expression."""

    key: str
    op: str  # "==" or "!="
    value: str
    # The label name for node.labels.* / engine.labels.*, else "".
    label: str = ""
    # The value as it is compared: lower-cased (architectures also normalised).
    want: str = dataclasses.field(default="", compare=False)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = dataclasses.field(
        default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    def matches(self, facts: NodeFacts) -> bool:
        """Whether the node described by ``facts`` satisfies this constraint."""
        if self.key == IP:
            inside = (facts.ip is not None and self.network is not None
                      and facts.ip.version == self.network.version and facts.ip in self.network)
            return inside if self.op == "==" else not inside
        actual = attribute(facts, self.key, self.label)
        equal = actual is not None and actual == self.want
        # A missing attribute never equals anything, so "!=" matches: Swarm's behaviour.
        return equal if self.op == "==" else not equal

    def matches_node(self, node: Resource) -> bool:
        return self.matches(NodeFacts.of(node))


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


def check_key(key: str) -> tuple[str, str]:
    """Validate a constraint or spread key; return it canonicalised plus its label name."""
    lowered = key.lower()
    for prefix in (NODE_LABELS, ENGINE_LABELS):
        if lowered.startswith(prefix):
            label = key[len(prefix):]
            if not label or not _KEY_RE.match(label):
                raise ConstraintError(f'invalid label name in "{key}"')
            # Prefix case is forgiven; the label name itself is matched exactly.
            return prefix + label, label
    if lowered in (ID, HOSTNAME, IP, ROLE, OS, ARCH):
        return lowered, ""
    raise ConstraintError(f'unknown constraint key "{key}": expected one of {", ".join(KEYS)}')


def parse_constraint(text: str) -> Constraint:
    """Parse ``key==value`` or ``key!=value``; a ConstraintError says what is wrong."""
    match = _EXPR_RE.match(text or "")
    if match is None:
        raise ConstraintError(f'invalid constraint "{text}": expected <key>==<value> or '
                              "<key>!=<value>, e.g. node.labels.zone==a")
    key, label = check_key(match.group("key"))
    op, value = match.group("op"), match.group("value")
    if not value or not _VALUE_RE.match(value):
        raise ConstraintError(f'invalid constraint "{text}": the value must be non-empty and '
                              "must not contain =, !, <, > or ~")
    network = None
    if key == IP:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConstraintError(f'invalid constraint "{text}": node.ip takes an address or '
                                  "a CIDR such as 10.0.0.0/24") from None
    want = normalize_arch(value) if key == ARCH else value.lower()
    return Constraint(key=key, op=op, value=value, label=label, want=want, network=network)


def parse_constraints(items: Iterable[Any] | None) -> tuple[Constraint, ...]:
    """Parse a service's ``placement.constraints`` list (None or empty: no constraints)."""
    return tuple(parse_constraint(str(item)) for item in items or ())


def match_all(constraints: Iterable[Constraint], facts: NodeFacts) -> bool:
    """Every constraint holds on the node (Swarm ANDs them)."""
    return all(c.matches(facts) for c in constraints)


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
