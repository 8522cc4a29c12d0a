"""Kubernetes label selectors: parse once, match many.

Selectors come from users (``swctl get -l``) and from controllers; both go through
``parse`` so syntax errors get one clear message with the offending text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[-A-Za-z0-9_.]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$")


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


@dataclasses.dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``in (...)`` value lists."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return [t for t in terms if t.strip()]


def parse_label(text: str) -> tuple[str, str]:
    """One ``KEY=VALUE`` label as a command line gives it (``--label``); ValueError if the
    ``=`` or the key is missing. The value may be empty, as in Docker."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f'invalid label "{text}": expected KEY=VALUE')
    return key.strip(), value


def parse(text: str | None) -> Selector:
    """Parse ``app=web,tier!=db,env in (a,b),!legacy``; ValueError says which term is bad."""
    if not text:
        return Selector()
    reqs = []
    for term in _split_terms(text):
        m = _TERM.match(term)
        if m is None or (m.group("neg") and (m.group("op") or m.group("setop"))):
            raise ValueError(
                f'invalid label selector term "{term.strip()}" in "{text}": use key=value, '
                "key!=value, key in (a,b), key notin (a,b), key or !key")
        key = m.group("key")
        if m.group("op"):
            op = "!=" if m.group("op") == "!=" else "="
            reqs.append(Requirement(key, op, frozenset([m.group("value")])))
        elif m.group("setop"):
            values = frozenset(v.strip() for v in m.group("values").split(",") if v.strip())
            reqs.append(Requirement(key, m.group("setop"), values))
        else:
            reqs.append(Requirement(key, "!exists" if m.group("neg") else "exists"))
    return Selector(tuple(reqs))
