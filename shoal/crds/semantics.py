"""Per-kind semantic checks: the rules about built-in kinds that a schema cannot express.

Admission runs these after the schema pass, on the defaulted document. Each check returns
``FieldError``s with full paths and tolerates fields of the wrong type (the schema pass has
already reported those), so that admission can report every problem in one go.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from shoal.crds import constraints, kinds, openapi, secretdata, template
from shoal.crds.fielderrors import FieldError, child, describe, quote
from shoal.crds.names import is_dns_label, is_dns_subdomain, is_docker_name


def entries(container: Any, key: str) -> list[tuple[int, Any]]:
    """``enumerate(container[key])`` when that is a list, else nothing (schema reports it)."""
    value = container.get(key) if isinstance(container, dict) else None
    return list(enumerate(value)) if isinstance(value, list) else []


def section(container: Any, key: str) -> dict[str, Any]:
    """``container[key]`` when that is a mapping, else an empty one (schema reports it)."""
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, dict) else {}


def _check_service(doc: dict[str, Any]) -> list[FieldError]:
    spec = section(doc, "spec")
    return [*_service_placement(spec), *_service_ports(spec),
            *_service_template(spec), *_service_networks(spec)]


def _service_networks(spec: dict[str, Any]) -> list[FieldError]:
    # An alias is a DNS name the resolver answers as written (like a service name), so it
    # takes Docker's name alphabet; a network listed twice would make its aliases depend
    # on which entry a reader looked at.
    errors: list[FieldError] = []
    seen: dict[str, int] = {}
    for index, item in entries(spec, "networks"):
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str) or not name:
            continue
        if name in seen:
            errors.append(FieldError(f"spec.networks[{index}]", (
                f"network {quote(name)} is already listed at spec.networks[{seen[name]}]; "
                "list each network once, with all its aliases")))
        seen.setdefault(name, index)
        for at, alias in entries(item, "aliases") if isinstance(item, dict) else ():
            if isinstance(alias, str) and alias and (
                    not is_docker_name(alias, 253) or ".." in alias):
                errors.append(FieldError(f"spec.networks[{index}].aliases[{at}]", (
                    f"{quote(alias)} is not a valid alias: use letters, digits, '_', '.' "
                    "and '-', starting and ending with a letter or digit (e.g. db)")))
    return errors


def _service_placement(spec: dict[str, Any]) -> list[FieldError]:
    # The grammar is the scheduler's own (crds.constraints): what passes here places.
    errors: list[FieldError] = []
    placement = section(spec, "placement")
    for index, text in entries(placement, "constraints"):
        if isinstance(text, str):
            try:
                constraints.parse_constraint(text)
            except constraints.ConstraintError as exc:
                errors.append(FieldError(f"spec.placement.constraints[{index}]", str(exc)))
    for index, pref in entries(placement, "preferences"):
        spread = pref.get("spread") if isinstance(pref, dict) else None
        if isinstance(spread, str):
            try:
                constraints.parse_spread(spread)
            except constraints.ConstraintError as exc:
                errors.append(FieldError(f"spec.placement.preferences[{index}].spread", str(exc)))
    rebalance = section(placement, "rebalance")
    if rebalance.get("enabled") is True and spec.get("mode") == "global":
        # A global service has one task per eligible node: there is nothing to even out.
        errors.append(FieldError("spec.placement.rebalance.enabled", "a global service runs "
                                 "one task on every eligible node, so there is nothing to "
                                 "rebalance; remove spec.placement.rebalance or use mode: "
                                 "replicated"))
    return errors


def _hashable(value: Any) -> bool:
    return not isinstance(value, dict | list)


def _service_ports(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    endpoint = section(spec, "endpoint")
    seen: dict[tuple[Any, Any], int] = {}
    for index, port in entries(endpoint, "ports"):
        if not isinstance(port, dict):
            continue
        path = f"spec.endpoint.ports[{index}]"
        published, protocol = port.get("published"), port.get("protocol", "tcp")
        # A list or map here is the schema's to report; only scalars can be compared.
        if published is not None and _hashable(published) and _hashable(protocol):
            first = seen.setdefault((published, protocol), index)
            if first != index:
                errors.append(FieldError(f"{path}.published", f"port {published}/{protocol} is "
                                         f"already published by ports[{first}]"))
        if endpoint.get("mode") == "dnsrr" and port.get("mode", "ingress") == "ingress":
            # The routing mesh balances over a VIP, which dnsrr services do not have.
            errors.append(FieldError(f"{path}.mode", "endpoint mode dnsrr cannot publish in "
                                     "ingress mode; use mode: host, or endpoint mode vip"))
    return errors


def _service_template(spec: dict[str, Any]) -> list[FieldError]:
    # The accessors the agent and drivers read the template with decide what is valid, so
    # a template admission accepts is one every node can run.
    return [FieldError(p.path, p.problem) for p in template.problems(section(spec, "template"))]


# Swarm's limit for secrets and configs; it also keeps each object well under etcd's
# default 1.5 MiB request size once base64 and JSON have inflated it.
MAX_SECRET_BYTES = 500 * 1024


def _check_secret(doc: dict[str, Any]) -> list[FieldError]:
    # Either a manifest's data or the whole sealed form etcd stores (secretdata); then,
    # whether spec.data decodes at all is the schema's `format: base64`; this checks the
    # decoded size, which the schema cannot express.
    form = secretdata.form_problems(section(doc, "spec"))
    if form:
        return form
    data = section(doc, "spec").get("data")
    if not isinstance(data, str):
        return []
    try:
        size = len(openapi.decode_base64(data))
    except ValueError:
        return []
    if size > MAX_SECRET_BYTES:
        return [FieldError("spec.data", f"is {size} bytes decoded; a secret holds at most "
                                        f"{MAX_SECRET_BYTES} bytes (500 KiB)")]
    return []


def _check_config(doc: dict[str, Any]) -> list[FieldError]:
    data = section(doc, "spec").get("data")
    if isinstance(data, str) and len(data.encode()) > MAX_SECRET_BYTES:
        return [FieldError("spec.data", f"is {len(data.encode())} bytes; a config holds at "
                                        f"most {MAX_SECRET_BYTES} bytes (500 KiB)")]
    return []


def _check_network(doc: dict[str, Any]) -> list[FieldError]:
    spec = section(doc, "spec")
    errors: list[FieldError] = []
    if spec.get("ingress") is True and spec.get("attachable") is True:
        errors.append(FieldError("spec.attachable", "an ingress network cannot be attachable"))
    gateway, subnet = spec.get("gateway"), spec.get("subnet")
    if not isinstance(gateway, str):
        return errors
    if subnet is None:
        errors.append(FieldError("spec.gateway", "needs spec.subnet: a gateway is an address "
                                                 "inside the network's subnet"))
        return errors
    try:
        inside = ipaddress.ip_address(gateway) in ipaddress.ip_network(str(subnet))
    except (ValueError, TypeError):
        return errors  # malformed values are reported by the schema's formats
    if not inside:
        errors.append(FieldError("spec.gateway", f"{gateway} is not inside subnet {subnet}"))
    return errors


_KIND_NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def _check_crd(doc: dict[str, Any]) -> list[FieldError]:
    spec = section(doc, "spec")
    return [*_crd_names(doc, spec), *_crd_versions(spec)]


def _crd_names(doc: dict[str, Any], spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    names = section(spec, "names")
    kind, plural, group = names.get("kind"), names.get("plural"), spec.get("group")
    if isinstance(kind, str) and kind and not _KIND_NAME_RE.match(kind):
        errors.append(FieldError("spec.names.kind", f"must be CamelCase starting with a capital "
                                 f"letter, such as Website; got {quote(kind)}"))
    for field in ("plural", "singular"):
        value = names.get(field)
        if isinstance(value, str) and value and not is_dns_label(value):
            errors.append(FieldError(f"spec.names.{field}", f"must be a lowercase DNS label such "
                                     f"as websites; got {quote(value)}"))
    for index, short in entries(names, "shortNames"):
        if isinstance(short, str) and short and not is_dns_label(short):
            errors.append(FieldError(f"spec.names.shortNames[{index}]",
                                     f"must be a lowercase DNS label; got {quote(short)}"))
    if isinstance(group, str) and group and not is_dns_subdomain(group):
        errors.append(FieldError("spec.group", f"must be a lowercase domain such as example.com;"
                                 f" got {quote(group)}"))
    name = section(doc, "metadata").get("name")
    expected = f"{plural}.{group}"
    if not errors and isinstance(plural, str) and isinstance(group, str) and name != expected:
        got = quote(name) if isinstance(name, str) else describe(name)
        errors.append(FieldError("metadata.name", f'must be "{expected}" (<plural>.<group>), '
                                                  f"got {got}"))
    return errors


def _crd_versions(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    versions = entries(spec, "versions")
    storage = [v for _, v in versions if isinstance(v, dict) and v.get("storage") is True]
    # A lone version that does not mention storage is the stored one: Kubernetes insists
    # on the flag, but nothing is gained by making a one-version CRD spell it out.
    only = versions[0][1] if len(versions) == 1 else None
    implied = isinstance(only, dict) and only.get("storage") is None
    if len(storage) != 1 and not implied:
        errors.append(FieldError("spec.versions", f"exactly one version must have storage: "
                                                  f"true, got {len(storage)}"))
    for index, version in versions:
        if not isinstance(version, dict):
            continue
        path = f"spec.versions[{index}]"
        name = version.get("name")
        if isinstance(name, str) and name and not is_dns_label(name):
            errors.append(FieldError(f"{path}.name", f"must be a lowercase DNS label such as v1;"
                                                     f" got {quote(name)}"))
        errors.extend(_crd_schema(section(version, "schema"), f"{path}.schema.openAPIV3Schema"))
    return errors


def _crd_schema(holder: dict[str, Any], path: str) -> list[FieldError]:
    schema = holder.get("openAPIV3Schema")
    if schema is None:
        return [FieldError(path, "required field missing: a kind needs a schema ({type: object,"
                                 " x-kubernetes-preserve-unknown-fields: true} accepts anything)")]
    if not isinstance(schema, dict):
        return []  # the CRD schema itself reports the wrong type
    errors: list[FieldError] = []
    if schema.get("type") != "object":
        errors.append(FieldError(f"{path}.type", f'must be "object" at the top of a kind\'s '
                                                 f'schema, got {describe(schema.get("type"))}'))
        schema = {**schema, "type": "object"}  # said once; check the rest as if it were
    _check_schema_node(schema, path, errors)
    return errors


_SCHEMA_TYPES = ("object", "array", "string", "integer", "number", "boolean")


def _check_schema_node(node: dict[str, Any], path: str, errors: list[FieldError]) -> None:
    """Enough of a meta-schema that the validator never trips on a user's schema."""
    type_name = node.get("type")
    if type_name is not None and type_name not in _SCHEMA_TYPES:
        errors.append(FieldError(f"{path}.type", f"must be one of {', '.join(_SCHEMA_TYPES)}; "
                                                 f"got {describe(type_name)}"))
    _check_schema_keywords(node, path, errors)
    props = node.get("properties")
    if isinstance(props, dict):
        for key, sub in props.items():
            _check_subschema(sub, child(f"{path}.properties", str(key)), errors)
    for keyword in ("items", "additionalProperties"):
        sub = node.get(keyword)
        if keyword == "additionalProperties" and isinstance(sub, bool):
            continue
        if sub is not None:
            _check_subschema(sub, f"{path}.{keyword}", errors)
    if "default" in node:
        errors.extend(FieldError(e.path, f"default does not fit its schema: {e.message}")
                      for e in openapi.validate(node["default"], node, f"{path}.default"))


def _check_subschema(sub: Any, path: str, errors: list[FieldError]) -> None:
    if isinstance(sub, dict):
        _check_schema_node(sub, path, errors)
    else:
        errors.append(FieldError(path, f"must be a schema (an object), got {describe(sub)}"))


def _check_schema_keywords(node: dict[str, Any], path: str, errors: list[FieldError]) -> None:
    shapes: dict[str, tuple[type | tuple[type, ...], str]] = {
        "properties": (dict, "an object mapping field names to schemas"),
        "required": (list, "a list of field names"),
        "enum": (list, "a list of allowed values"),
        "pattern": (str, "a regular expression"),
    }
    for keyword, (expected, what) in shapes.items():
        if keyword in node and not isinstance(node[keyword], expected):
            errors.append(FieldError(f"{path}.{keyword}", f"must be {what}, got "
                                                          f"{describe(node[keyword])}"))
    if isinstance(node.get("pattern"), str):
        try:
            re.compile(node["pattern"])
        except re.error as exc:
            errors.append(FieldError(f"{path}.pattern", f"is not a valid regular expression: "
                                                        f"{exc}"))


SEMANTIC_CHECKS: dict[str, Callable[[dict[str, Any]], list[FieldError]]] = {
    "Service": _check_service,
    "Secret": _check_secret,
    "Config": _check_config,
    "Network": _check_network,
    kinds.CRD_KIND: _check_crd,
}
"""Per built-in kind: checks on the whole defaulted document that a schema cannot express.
Each returns FieldErrors with full paths and tolerates fields of the wrong type (the schema
pass reports those), so that admission can report every problem in one go."""


