"""Object names: which names each kind accepts, and the one mapping of a name to a DNS label.

One home for both rules, because the envelope (``metadata.name``, ``metadata.namespace``),
the per-kind checks (CRD names and groups) and every layer that turns a name into a
stricter identifier (DNS answers, hostnames) must agree on them and word a refusal the
same way.

Which names (``name_rule``): the kinds a Swarm user names -- services, networks, secrets,
configs -- take Docker's names, because compose files and tutorials use them everywhere
(``nginx_network``, ``hyperf_v1.0``): letters of either case, digits, ``_``, ``.`` and
``-``, starting and ending with a letter or digit. Lengths are Docker's: swarmkit refuses
service and network names over 63 characters and secret and config names over 64.
Swarmkit is stricter than Docker's container names for services and networks (no dots);
Shoal accepts the dots, which its resolver serves as written, and refuses only ``..`` there
(an empty DNS label cannot be looked up). Tasks and events carry their owner's name
(``hyperf_v1.0.1.3``) so they take the same alphabet up to 253 characters. Namespaces
are stacks (``docker stack deploy -c x.yml my_app``: the stack name is the namespace its
objects live in), so they take the service rule too. Docker's CLI itself refuses only an
empty or blank stack name; what it accepts in practice is what the daemon then accepts in
the names made from it (``my_app_web``, the ``com.docker.stack.namespace`` label), i.e.
the service alphabet, so Shoal applies that rule with its length: 63, no ``..``. Every
other kind (nodes, CRDs, user kinds) keeps Kubernetes' DNS-1123 rules.

The mapping (``dns_label``): where such a name must become a DNS label (a hostname, the
label form of a service's DNS name) it is lower-cased, every run of characters outside
``[a-z0-9-]`` becomes ``-``, leading and trailing ``-`` go, and -- only when that changed
anything, case included -- ``-`` and the first 6 hex digits of the SHA-256 of the name as
written are appended, cutting the stem so the whole stays within 63. So a name that is
already a DNS label maps to itself, ``a_b`` (``a-b-<hash>``) never collides with ``a-b``,
and ``Web`` never with ``web``; two names collide only through a 24-bit hash collision or
a name chosen to spell another's mapped form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from shoal.crds.fielderrors import quote

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DOCKER_NAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]*[a-zA-Z0-9])?$")
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_NOT_DOCKER = re.compile(r"[^a-zA-Z0-9_.-]+")

DNS_LABEL_MAX = 63
HASH_DIGITS = 6


def is_dns_subdomain(name: str) -> bool:
    """Kubernetes' DNS-1123 subdomain: what object names must be (``web``, ``web.v2``)."""
    return len(name) <= 253 and _DNS_SUBDOMAIN_RE.match(name) is not None


def is_dns_label(name: str) -> bool:
    """A DNS-1123 label: one component of a DNS name, at most 63 characters, no dots."""
    return len(name) <= DNS_LABEL_MAX and _DNS_LABEL_RE.match(name) is not None


def is_docker_name(name: str, limit: int = DNS_LABEL_MAX) -> bool:
    """Docker's object name (``nginx_network``, ``hyperf_v1.0``), at most ``limit`` long."""
    return len(name) <= limit and _DOCKER_NAME_RE.match(name) is not None


def dns_label(name: str) -> str:
    """``name`` as a DNS label by the rule in the module docstring: itself when it is one
    (``web``), else a lower-cased, ``-``-joined stem and a hash (``hyperf-v1-0-3c9a1e``)."""
    if is_dns_label(name):
        return name
    stem = _NOT_LABEL.sub("-", name.lower()).strip("-")
    digest = hashlib.sha256(name.encode()).hexdigest()[:HASH_DIGITS]
    stem = stem[: DNS_LABEL_MAX - 1 - HASH_DIGITS].rstrip("-")
    return f"{stem}-{digest}" if stem else f"x{digest}"


@dataclasses.dataclass(frozen=True)
class NameRule:
    """What names one kind accepts; ``error`` words a refusal with a suggested fix."""

    docker: bool  # Docker's alphabet; else DNS-1123 (a subdomain, or a label if not dots)
    limit: int
    dots: bool = True
    what: str = "name"  # "service name": how messages call it

    def error(self, name: str) -> str | None:
        if self.docker:
            return _docker_name_error(name, self)
        return name_error(name, self.dots)


SERVICE_RULE = NameRule(docker=True, limit=63, what="service name")
NETWORK_RULE = NameRule(docker=True, limit=63, what="network name")
SECRET_RULE = NameRule(docker=True, limit=64, what="secret name")
CONFIG_RULE = NameRule(docker=True, limit=64, what="config name")
# A stack name is written after the service in DNS (``web.my_app.v1``): no empty label.
NAMESPACE_RULE = NameRule(docker=True, limit=63, what="namespace")
DERIVED_RULE = NameRule(docker=True, limit=253)  # tasks and events: owner's name + suffix
DEFAULT_RULE = NameRule(docker=False, limit=253)

_RULES = {"Service": SERVICE_RULE, "Network": NETWORK_RULE, "Secret": SECRET_RULE,
          "Config": CONFIG_RULE, "Task": DERIVED_RULE, "Event": DERIVED_RULE}

# Only where the name is looked up in DNS as written does an empty label matter.
_DNS_AS_WRITTEN = {"service name", "network name", "namespace"}


def name_rule(kind: str | None) -> NameRule:
    """The rule for ``metadata.name`` of ``kind`` (built-in kind name; None: unknown)."""
    return _RULES.get(kind or "", DEFAULT_RULE)


def namespace_error(namespace: str) -> str | None:
    """Why ``namespace`` cannot be a namespace (a stack name), or None; the one check for
    ``metadata.namespace`` and ``-n/--namespace`` alike."""
    return NAMESPACE_RULE.error(namespace)


def _docker_name_error(name: str, rule: NameRule) -> str | None:
    ok = is_docker_name(name, rule.limit)
    if ok and not (rule.what in _DNS_AS_WRITTEN and ".." in name):
        return None
    hint = _docker_hint(name, rule)
    too_long = f"; this one has {len(name)}" if len(name) > rule.limit else ""
    if ok:
        return (f"{quote(name)} is not a valid {rule.what}: '..' is not allowed (the name is "
                f"a DNS name, and '..' leaves an empty label){hint}")
    return (f"{quote(name)} is not a valid {rule.what}: use letters, digits, '_', '.' and '-', "
            f"starting and ending with a letter or digit, at most {rule.limit} characters "
            f"(Docker's rule){too_long}{hint}")


def _docker_hint(name: str, rule: NameRule) -> str:
    fixed = re.sub(r"\.{2,}", ".", _NOT_DOCKER.sub("-", name))
    fixed = fixed.strip("_.-")[: rule.limit].rstrip("_.-")
    valid = fixed and fixed != name and _docker_name_error(fixed, rule) is None
    return f'; did you mean "{fixed}"?' if valid else ""


def _name_hint(name: str, dots: bool) -> str:
    """A valid name close to ``name`` (``Web_1`` -> ``web-1``), or "" when none is obvious."""
    allowed = "a-z0-9.-" if dots else "a-z0-9-"
    fixed = re.sub(f"[^{allowed}]+", "-", name.lower()).strip("-.")
    fixed = fixed[: 253 if dots else 63].strip("-.")
    valid = is_dns_subdomain(fixed) if dots else is_dns_label(fixed)
    return f'; did you mean "{fixed}"?' if valid and fixed != name else ""


def name_error(name: str, dots: bool = True) -> str | None:
    """Why ``name`` is not a DNS-1123 subdomain (a label if not ``dots``), or None."""
    if dots and is_dns_subdomain(name):
        return None
    if not dots and is_dns_label(name):
        return None
    what = "'-' and '.'" if dots else "and '-'"
    limit = 253 if dots else 63
    return (f"{quote(name)} is not a valid name: use lowercase letters, digits {what}, "
            f"starting and ending with a letter or digit, at most {limit} characters"
            f"{_name_hint(name, dots)}")
