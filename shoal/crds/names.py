"""Object names: the DNS-1123 rules Kubernetes and Swarm both use, with a fix to suggest.

One home for the rule, because the envelope (``metadata.name``, ``metadata.namespace``)
and the per-kind checks (a service name is a single DNS label, CRD names and groups) all
apply it and must word a refusal the same way.
"""

from __future__ import annotations

import re

from shoal.crds.fielderrors import quote

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_dns_subdomain(name: str) -> bool:
    """Kubernetes' DNS-1123 subdomain: what object names must be (``web``, ``web.v2``)."""
    return len(name) <= 253 and _DNS_SUBDOMAIN_RE.match(name) is not None


def is_dns_label(name: str) -> bool:
    """A DNS-1123 label: one component of a DNS name, at most 63 characters, no dots."""
    return len(name) <= 63 and _DNS_LABEL_RE.match(name) is not None


def _name_hint(name: str, dots: bool) -> str:
    """A valid name close to ``name`` (``Web_1`` -> ``web-1``), or "" when none is obvious."""
    allowed = "a-z0-9.-" if dots else "a-z0-9-"
    fixed = re.sub(f"[^{allowed}]+", "-", name.lower()).strip("-.")
    fixed = fixed[: 253 if dots else 63].strip("-.")
    valid = is_dns_subdomain(fixed) if dots else is_dns_label(fixed)
    return f'; did you mean "{fixed}"?' if valid and fixed != name else ""


def name_error(name: str, dots: bool = True) -> str | None:
    if dots and is_dns_subdomain(name):
        return None
    if not dots and is_dns_label(name):
        return None
    what = "'-' and '.'" if dots else "and '-'"
    limit = 253 if dots else 63
    return (f"{quote(name)} is not a valid name: use lowercase letters, digits {what}, "
            f"starting and ending with a letter or digit, at most {limit} characters"
            f"{_name_hint(name, dots)}")

