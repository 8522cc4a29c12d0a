"""The placement-constraint grammar: ``node.labels.zone==a`` and ``spread: node.labels.zone``.

One parser for everyone who reads ``spec.placement``: admission refuses what it cannot
parse (with the field path added), the scheduler filters nodes with what it returns, the
global orchestrator and ``swctl converge`` decide which nodes deserve a task with it. Two
parsers had drifted apart — admission passed ``node.labels.zone==a==b``, which the
scheduler then refused forever, leaving the tasks pending — so there is exactly one
``parse_constraint`` and one wording for its refusals. Matching a parsed constraint against
a node (what a node *is*) is not grammar and lives with the controllers
(``shoal.controllers.nodefacts``).

The language is Swarm's: keys ``node.id``, ``node.hostname``, ``node.ip`` (an address or a
CIDR), ``node.role`` (``manager`` or ``worker``), ``node.platform.os``,
``node.platform.arch``, ``node.labels.<name>`` and ``engine.labels.<name>``; operators
``==`` and ``!=``; values compared case-insensitively. Key prefixes are case-insensitive,
label names are kept as written (they are matched exactly). Like swarmkit, a value may not
contain an operator character (``= ! < > ~``): ``a==b==c`` would be ambiguous and Swarm
reserves them for future operators. Two places where Shoal goes further than swarmkit,
kept because manifests already use them: a label name may contain ``/``
(``node.labels.example.com/rack``), and a value may hold any other character.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from typing import Any, Final

from shoal.crds.fielderrors import quote, suggest

ID: Final = "node.id"
HOSTNAME: Final = "node.hostname"
IP: Final = "node.ip"
ROLE: Final = "node.role"
OS: Final = "node.platform.os"
ARCH: Final = "node.platform.arch"
NODE_LABELS: Final = "node.labels."
ENGINE_LABELS: Final = "engine.labels."
#: The keys that name one fact of a node, in the order messages list them.
PLAIN_KEYS: Final = (ID, HOSTNAME, IP, ROLE, OS, ARCH)
LABEL_PREFIXES: Final = (NODE_LABELS, ENGINE_LABELS)
OPERATORS: Final = ("==", "!=")
ROLES: Final = ("manager", "worker")

_KEYS_TEXT: Final = ", ".join((*PLAIN_KEYS, *(p + "<key>" for p in LABEL_PREFIXES)))
# The key is everything up to the operator that is not whitespace; what it may be is
# checked separately so that the message can say which part is wrong.
_EXPR_RE: Final = re.compile(r"^\s*(?P<key>[^=!\s]*)\s*(?P<op>==|!=)\s*(?P<value>.*?)\s*$")
_LABEL_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_OPERATOR_CHARS: Final = frozenset("=!<>~")

# Architecture spellings differ between the kernel (uname: x86_64, aarch64) and Go/Docker
# (amd64, arm64); agents report whichever their platform library gives. Normalising both
# sides means "node.platform.arch==x86_64" and "==amd64" select the same nodes.
_ARCH_ALIASES: Final[dict[str, str]] = {
    "x86_64": "amd64", "x86-64": "amd64", "x64": "amd64",
    "aarch64": "arm64", "armv8": "arm64", "armv8l": "arm64",
    "armv7l": "arm", "armv7": "arm", "armhf": "arm",
    "i386": "386", "i686": "386", "x86": "386",
}


class ConstraintError(ValueError):
    """A constraint or spread preference that cannot be parsed; the message says what is
    wrong and what to write instead, and names the text (not the field: callers add that)."""


def normalize_arch(arch: str) -> str:
    """``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``; lower-cased, other names as given."""
    arch = arch.strip().lower()
    return _ARCH_ALIASES.get(arch, arch)


@dataclasses.dataclass(frozen=True, slots=True)
class Constraint:
    """One parsed ``key op value`` expression."""

    key: str  # canonical: lower-case prefix, label name as written
    op: str  # "==" or "!="
    value: str  # as written, surrounding whitespace removed
    # The label name for node.labels.* / engine.labels.*, else "".
    label: str = ""
    # The value as it is compared: lower-cased (architectures also normalised).
    want: str = dataclasses.field(default="", compare=False)
    # node.ip only: the address or block the value names.
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = dataclasses.field(
        default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


def _refuse(text: str, why: str) -> ConstraintError:
    return ConstraintError(f"invalid constraint {quote(text)}: {why}")


def _label_problem(label: str, prefix: str) -> str | None:
    if not label:
        return f"missing the label name after {prefix}"
    if not _LABEL_RE.match(label):
        return (f"label name {quote(label)} may only hold letters, digits, '_', '.', '-' "
                "and '/', and must start with a letter, digit or '_'")
    return None


def _key(key: str, text: str) -> tuple[str, str]:
    """(canonical key, label name or "") of the key part of ``text``."""
    lowered = key.lower()
    if lowered in PLAIN_KEYS:
        return lowered, ""
    for prefix in LABEL_PREFIXES:
        if lowered.startswith(prefix):
            label = key[len(prefix):]
            problem = _label_problem(label, prefix)
            if problem is not None:
                raise _refuse(text, problem)
            return prefix + label, label
    guess = suggest(lowered, (*PLAIN_KEYS, *LABEL_PREFIXES))
    hint = f'did you mean "{guess}"? ' if guess else ""
    raise _refuse(text, f"unknown key {quote(key)}; {hint}keys are {_KEYS_TEXT}")


def parse_constraint(text: str) -> Constraint:
    """Parse ``key==value`` or ``key!=value``; a ConstraintError says what is wrong.

    ``" Node.Labels.Zone == East "`` -> ``Constraint("node.labels.Zone", "==", "East")``.
    """
    match = _EXPR_RE.match(text)
    if match is None:
        raise _refuse(text, f"write <key>==<value> or <key>!=<value>, where <key> is one of "
                            f"{_KEYS_TEXT}")
    key, label = _key(match.group("key"), text)
    op, value = match.group("op"), match.group("value")
    if not value:
        raise _refuse(text, f"missing value after {op}")
    if not _OPERATOR_CHARS.isdisjoint(value):
        raise _refuse(text, f"the value {quote(value)} must not contain =, !, <, > or ~; "
                            "write one comparison per constraint")
    network = None
    if key == ROLE and value.lower() not in ROLES:
        raise _refuse(text, "node.role is manager or worker")
    if key == IP:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise _refuse(text, "node.ip takes an address or a CIDR such as 10.0.0.0/24"
                          ) from None
    want = normalize_arch(value) if key == ARCH else value.lower()
    return Constraint(key=key, op=op, value=value, label=label, want=want, network=network)


def parse_constraints(items: Iterable[Any] | None) -> tuple[Constraint, ...]:
    """Parse a ``placement.constraints`` list (None or empty: no constraints)."""
    return tuple(parse_constraint(str(item)) for item in items or ())


def parse_spread(text: str) -> str:
    """Check a ``spread`` preference and return it canonical: ``Node.Labels.zone`` ->
    ``node.labels.zone``, ``Node.ID`` -> ``node.id``.

    Labels spread as in Swarm; the plain node attributes constraints read group by that
    attribute (``spread: node.id`` is one group per node, the spread the scheduler does
    anyway). Any other descriptor is taken as Swarm takes it, grouping every node
    together, which spreads nothing: real stack files carry such typos (``spread:
    type``, ``spread: node.role.manager``) and Docker deploys them, so refusing them would
    refuse files Docker runs. ``spread_is_effective`` tells them apart for a warning."""
    lowered = text.lower()
    for prefix in LABEL_PREFIXES:
        if lowered.startswith(prefix):
            problem = _label_problem(text[len(prefix):], prefix)
            if problem is None:
                return prefix + text[len(prefix):]
            raise ConstraintError(f"invalid spread preference {quote(text)}: {problem}")
    if lowered in PLAIN_KEYS:
        return lowered
    if not text.strip():
        raise ConstraintError(f"invalid spread preference {quote(text)}: write "
                              "node.labels.<key>, engine.labels.<key> or one of "
                              f"{', '.join(PLAIN_KEYS)}")
    return text


def spread_is_effective(descriptor: str) -> bool:
    """Whether a checked spread descriptor groups nodes at all (see ``parse_spread``)."""
    return descriptor.lower().startswith(LABEL_PREFIXES) or descriptor.lower() in PLAIN_KEYS
