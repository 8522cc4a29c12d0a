"""Admission of incoming objects: envelope checks, schema defaults and validation, semantics.

``admit`` is the one door every object goes through — ``swctl apply`` before it writes,
the store before it accepts — so a manifest is judged the same way wherever it comes from.
It works in three passes and reports everything it finds, not just the first problem,
because a user fixing a 40-line manifest wants the whole list at once:

1. the envelope (``apiVersion``, ``kind``, ``metadata``), checked here in code because its
   rules (name syntax, namespace scope) are the same for every kind;
2. ``spec`` and ``status`` against the kind's openAPIV3Schema, after structural defaulting
   in the Kubernetes manner — built-in kinds and user-defined kinds take the same path;
3. per-kind semantic checks that a schema cannot express (``SEMANTIC_CHECKS``).

The schema validator implements the subset of OpenAPI v3 that CRDs use (``type``,
``properties``, ``required``, ``items``, ``enum``, bounds, lengths, ``pattern``, item
counts, ``additionalProperties``, ``default``, ``nullable``, ``format`` and the
``x-kubernetes-preserve-unknown-fields`` / ``x-kubernetes-int-or-string`` extensions).
Keywords it does not know (``anyOf``, ``x-kubernetes-validations``, ...) are ignored rather
than refused, so existing CRD files still apply. Unlike Kubernetes, which silently prunes
undeclared fields, undeclared fields are errors with a "did you mean" hint: a typo such as
``replica: 3`` must not quietly leave the service at one replica.

Messages name the field path and say what to write instead; ``ValidationError`` adds which
object and which file the problem is in, one line per problem.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import difflib
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from shoal.crds import kinds, resource, units

Schema = dict[str, Any]

# ---------------------------------------------------------------------------------------
# Errors


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One problem at one field path, e.g. ``spec.replicas: must be >= 0, got -1``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(ValueError):
    """Every problem found in one object, with the object's ref and where it came from."""

    def __init__(self, errors: Iterable[FieldError], ref: str = "", source: str = "") -> None:
        self.errors: list[FieldError] = list(errors)
        self.ref = ref
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = ", ".join(part for part in (self.ref, self.source) if part)
        suffix = f" ({where})" if where else ""
        return "\n".join(f"{error}{suffix}" for error in self.errors)

    def __str__(self) -> str:
        return self._render()


# ---------------------------------------------------------------------------------------
# Describing values in messages


def _describe(value: Any) -> str:
    """A value as messages show it: ``integer 5``, ``string "x"``, ``null``, ``an object``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _quote(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return json.dumps(shown, ensure_ascii=False)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was most likely meant to be, if any is close enough."""
    options = [c for c in candidates if isinstance(c, str)]
    squashed = {re.sub(r"[-_]", "", c.lower()): c for c in options}
    exact = squashed.get(re.sub(r"[-_]", "", word.lower()))
    if exact is not None:  # restart_policy, RestartPolicy -> restartPolicy
        return exact
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


_SIMPLE_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@functools.lru_cache(maxsize=4096)  # the same few hundred paths recur on every object
def _child(path: str, key: str) -> str:
    """``spec`` + ``replicas`` -> ``spec.replicas``; odd keys go in brackets, quoted."""
    if not _SIMPLE_KEY_RE.match(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------------------------------
# Structural defaulting


def apply_defaults(doc: dict[str, Any], schema: Schema) -> None:
    """Fill absent fields that have a ``default``, in place, the way Kubernetes does.

    Defaults fill only objects that exist, except that an object property whose own
    default is ``{}`` is created and then filled — that is how Service's restartPolicy and
    updateConfig get Swarm's values when the manifest leaves them out. A ``null`` in a
    non-nullable field counts as absent (YAML ``restartPolicy:`` with nothing after it).
    Values of the wrong type are left alone for ``validate`` to report.
    """
    _default(doc, schema)


def _default(value: Any, schema: Any) -> None:
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        _default_object(value, schema)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])


def _default_object(value: dict[str, Any], schema: Schema) -> None:
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    for key, sub in props.items():
        if not isinstance(sub, dict):
            continue
        absent = key not in value or (value[key] is None and not sub.get("nullable"))
        if absent and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            _default(value[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, item in value.items():
            if key not in props:
                _default(item, extra)


# ---------------------------------------------------------------------------------------
# Schema validation

_ARTICLES = {"object": "an object", "array": "an array", "string": "a string",
             "integer": "an integer", "number": "a number", "boolean": "a boolean"}


def _is_type(value: Any, type_name: str) -> bool:
    if type_name == "object":
        return isinstance(value, dict)
    if type_name == "array":
        return isinstance(value, list)
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):  # bool is an int subclass in Python, never in JSON
        return False
    if type_name == "integer":
        return isinstance(value, int)
    if type_name == "number":
        return isinstance(value, int | float)
    return True  # a type this validator does not know constrains nothing


def validate(doc: Any, schema: Schema, path: str = "") -> list[FieldError]:
    """Every way ``doc`` breaks ``schema``, each with the path of the offending field.

    ``path`` is the path of ``doc`` itself (``"spec"`` when checking a spec alone). The
    schema is trusted to be well-formed only as far as needed: malformed parts are skipped,
    never a crash, since user CRDs reach here too.
    """
    errors: list[FieldError] = []
    _check(doc, schema, path, errors)
    return errors


def _check(value: Any, schema: Any, path: str, errors: list[FieldError]) -> None:
    if not isinstance(schema, dict):
        return
    if value is None and (schema.get("nullable") or not _declares_type(schema)):
        return
    if not _check_type(value, schema, path, errors):
        return
    if "enum" in schema:
        _check_enum(value, schema["enum"], path, errors)
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_bounds(value, schema, path, errors)
    if isinstance(value, str):
        _check_string(value, schema, path, errors)
    if "format" in schema:
        _check_format(value, schema["format"], path, errors)
    if isinstance(value, list):
        _check_array(value, schema, path, errors)
    elif isinstance(value, dict):
        _check_object(value, schema, path, errors)


def _declares_type(schema: Schema) -> bool:
    return "type" in schema or bool(schema.get("x-kubernetes-int-or-string"))


def _check_type(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        if _is_type(value, "integer") or isinstance(value, str):
            return True
        errors.append(FieldError(path, f"must be an integer or a string, got {_describe(value)}"))
        return False
    type_name = schema.get("type")
    if not isinstance(type_name, str) or _is_type(value, type_name):
        return True
    message = f"must be {_ARTICLES.get(type_name, type_name)}, got {_describe(value)}"
    if type_name == "string" and isinstance(value, bool | int | float):
        # YAML turns 8080, 1.10 and yes into numbers and booleans; quoting keeps the text.
        message += "; put it in quotes to keep it as text"
    errors.append(FieldError(path, message))
    return False


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _check_enum(value: Any, allowed: Any, path: str, errors: list[FieldError]) -> None:
    if not isinstance(allowed, list) or any(_same(value, option) for option in allowed):
        return
    options = ", ".join(o if isinstance(o, str) else json.dumps(o) for o in allowed)
    got = _quote(value) if isinstance(value, str) else json.dumps(value, default=str)
    errors.append(FieldError(path, f"must be one of {options}; got {got}"))


def _check_bounds(value: float, schema: Schema, path: str, errors: list[FieldError]) -> None:
    got = _number(value)
    low, high = schema.get("minimum"), schema.get("maximum")
    low_excl, high_excl = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    # OpenAPI 3.0 spells exclusivity as a boolean beside minimum; JSON Schema as a number.
    if isinstance(low_excl, int | float) and not isinstance(low_excl, bool):
        low, low_excl = low_excl, True
    if isinstance(high_excl, int | float) and not isinstance(high_excl, bool):
        high, high_excl = high_excl, True
    if isinstance(low, int | float):
        if low_excl is True and value <= low:
            errors.append(FieldError(path, f"must be > {_number(low)}, got {got}"))
        elif value < low:
            errors.append(FieldError(path, f"must be >= {_number(low)}, got {got}"))
    if isinstance(high, int | float):
        if high_excl is True and value >= high:
            errors.append(FieldError(path, f"must be < {_number(high)}, got {got}"))
        elif value > high:
            errors.append(FieldError(path, f"must be <= {_number(high)}, got {got}"))


def _check_string(value: str, schema: Schema, path: str, errors: list[FieldError]) -> None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        message = ("must not be empty" if low == 1
                   else f"must be at least {_plural(low, 'character')} long, got {len(value)}")
        errors.append(FieldError(path, message))
    if isinstance(high, int) and len(value) > high:
        errors.append(FieldError(
            path, f"must be at most {_plural(high, 'character')} long, got {len(value)}"))
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            matched = re.search(pattern, value) is not None
        except re.error:
            return  # a broken pattern in a user CRD is reported when the CRD is admitted
        if not matched:
            errors.append(FieldError(
                path, f"must match the pattern {json.dumps(pattern)}, got {_quote(value)}"))


def _check_array(value: list[Any], schema: Schema, path: str,
                 errors: list[FieldError]) -> None:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        errors.append(FieldError(path, f"must have at least {_plural(low, 'item')}, "
                                       f"got {len(value)}"))
    if isinstance(high, int) and len(value) > high:
        errors.append(FieldError(path, f"must have at most {_plural(high, 'item')}, "
                                       f"got {len(value)}"))
    items = schema.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            _check(item, items, f"{path}[{index}]", errors)


def _check_object(value: dict[Any, Any], schema: Schema, path: str,
                  errors: list[FieldError]) -> None:
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    required = schema.get("required")
    for name in required if isinstance(required, list) else ():
        sub = props.get(name)
        nullable = isinstance(sub, dict) and sub.get("nullable")
        if name not in value or (value[name] is None and not nullable):
            errors.append(FieldError(_child(path, str(name)), "required field missing"))
    extra = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    strict = schema.get("type") == "object" or bool(props) or extra is False
    for key, item in value.items():
        if not isinstance(key, str):
            errors.append(FieldError(path, f"field names must be strings, got {_describe(key)}"))
        elif key in props:
            _check(item, props[key], _child(path, key), errors)
        elif isinstance(extra, dict):
            _check(item, extra, _child(path, key), errors)
        elif not (extra is True or preserve) and strict:
            errors.append(FieldError(_child(path, key), _unknown_field(key, props)))


def _unknown_field(key: str, props: dict[str, Any]) -> str:
    guess = _suggest(key, props)
    if guess is not None:
        return f'unknown field "{key}"; did you mean "{guess}"?'
    if props:
        return f'unknown field "{key}"; known fields are {", ".join(props)}'
    return (f'unknown field "{key}": no fields are declared here (a CRD schema allows any '
            "with x-kubernetes-preserve-unknown-fields: true)")


# ---------------------------------------------------------------------------------------
# Formats


def decode_base64(text: str) -> bytes:
    """Decode base64 the way Go and Kubernetes do: line breaks are ignored.

    ``openssl base64`` wraps at 64 columns and YAML block scalars keep those breaks, so
    whitespace is dropped before strict decoding. Raises ValueError with a clear message.
    """
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64: encode the bytes with `base64 -w0 FILE`") from None


def _format_cidr(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            fixed = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"invalid CIDR {_quote(value)}: write an address block such as "
                             "10.0.9.0/24") from None
        raise ValueError(f"invalid CIDR {_quote(value)}: host bits are set; did you mean "
                         f"{fixed}?") from None


def _format_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"invalid IP address {_quote(value)}: write an address such as "
                         "10.0.9.1") from None


def _format_base64(value: str) -> None:
    try:
        decode_base64(value)
    except ValueError as exc:
        raise ValueError(f"{_quote(value, 20)} {exc}") from None


# Each checker raises ValueError with the message to show. Formats not listed here (such as
# Kubernetes' date-time or int32) are accepted without checking, as Kubernetes does.
_FORMATS: dict[str, Callable[[Any], object]] = {
    "duration": units.parse_duration,
    "quantity": units.parse_size,
    "cidr": _format_cidr,
    "ip": _format_ip,
    "base64": _format_base64,
    "byte": _format_base64,  # OpenAPI's own name for base64
}


def _check_format(value: Any, name: Any, path: str, errors: list[FieldError]) -> None:
    checker = _FORMATS.get(name) if isinstance(name, str) else None
    if checker is None or value is None or isinstance(value, bool | dict | list):
        return
    if name in ("cidr", "ip", "base64", "byte") and not isinstance(value, str):
        return  # the type check has already said it must be a string
    try:
        checker(value)
    except ValueError as exc:
        errors.append(FieldError(path, str(exc)))


# ---------------------------------------------------------------------------------------
# Names

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


def _name_error(name: str, dots: bool = True) -> str | None:
    if dots and is_dns_subdomain(name):
        return None
    if not dots and is_dns_label(name):
        return None
    what = "'-' and '.'" if dots else "and '-'"
    limit = 253 if dots else 63
    return (f"{_quote(name)} is not a valid name: use lowercase letters, digits {what}, "
            f"starting and ending with a letter or digit, at most {limit} characters"
            f"{_name_hint(name, dots)}")


# ---------------------------------------------------------------------------------------
# Semantic checks: rules a schema cannot express, per built-in kind

CONSTRAINT_KEYS = ("node.id", "node.hostname", "node.ip", "node.role", "node.platform.os",
                   "node.platform.arch")
LABEL_KEY_PREFIXES = ("node.labels.", "engine.labels.")
CONSTRAINT_OPERATORS = ("==", "!=")
_ALL_KEYS_TEXT = ", ".join((*CONSTRAINT_KEYS, *(p + "<key>" for p in LABEL_KEY_PREFIXES)))
_CONSTRAINT_RE = re.compile(r"^\s*(?P<key>[^=!\s]*)\s*(?P<op>==|!=)\s*(?P<value>.*?)\s*$")


def parse_constraint(text: str) -> tuple[str, str, str]:
    """Split a placement constraint into ``(key, operator, value)``.

    ``node.labels.zone == a`` -> ``("node.labels.zone", "==", "a")``. Keys are matched
    case-insensitively and returned with a lower-case prefix (label names keep their case);
    the scheduler compares values case-insensitively, as Swarm does.
    """
    match = _CONSTRAINT_RE.match(text)
    if match is None:
        raise ValueError(f"invalid constraint {_quote(text)}: write <key>==<value> or "
                         f"<key>!=<value>, where <key> is one of {_ALL_KEYS_TEXT}")
    key, op, value = match.group("key"), match.group("op"), match.group("value")
    if not value:
        raise ValueError(f"invalid constraint {_quote(text)}: missing value after {op}")
    return _constraint_key(key, text), op, value


def _constraint_key(key: str, text: str) -> str:
    lowered = key.lower()
    if lowered in CONSTRAINT_KEYS:
        return lowered
    for prefix in LABEL_KEY_PREFIXES:
        if lowered.startswith(prefix):
            label = key[len(prefix):]
            if not label:
                raise ValueError(f"invalid constraint {_quote(text)}: missing the label name "
                                 f"after {prefix}")
            return prefix + label
    guess = _suggest(lowered, (*CONSTRAINT_KEYS, "node.labels.", "engine.labels."))
    hint = f'did you mean "{guess}"? ' if guess else ""
    raise ValueError(f"invalid constraint {_quote(text)}: unknown key {_quote(key)}; {hint}"
                     f"keys are {_ALL_KEYS_TEXT}")


def parse_spread(text: str) -> tuple[str, str]:
    """Split a spread preference: ``node.labels.zone`` -> ``("node.labels", "zone")``."""
    for prefix in LABEL_KEY_PREFIXES:
        if text.lower().startswith(prefix) and len(text) > len(prefix):
            return prefix[:-1], text[len(prefix):]
    raise ValueError(f"invalid spread preference {_quote(text)}: write node.labels.<key> or "
                     "engine.labels.<key>")


def _items(container: Any, key: str) -> list[tuple[int, Any]]:
    """``enumerate(container[key])`` when that is a list, else nothing (schema reports it)."""
    value = container.get(key) if isinstance(container, dict) else None
    return list(enumerate(value)) if isinstance(value, list) else []


def _obj(container: Any, key: str) -> dict[str, Any]:
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, dict) else {}


def _check_service(doc: dict[str, Any]) -> list[FieldError]:
    spec = _obj(doc, "spec")
    return [*_service_name(doc), *_service_placement(spec), *_service_ports(spec),
            *_service_template(_obj(spec, "template"))]


def _service_name(doc: dict[str, Any]) -> list[FieldError]:
    # A service name is a DNS name on its networks and the prefix of its task names
    # (web.1), so it must be a single DNS label; swarmkit has the same rule.
    name = _obj(doc, "metadata").get("name")
    if isinstance(name, str) and is_dns_subdomain(name):
        message = _name_error(name, dots=False)
        if message:
            return [FieldError("metadata.name", message + " (a service name is a DNS label)")]
    return []


def _service_placement(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    placement = _obj(spec, "placement")
    for index, text in _items(placement, "constraints"):
        path = f"spec.placement.constraints[{index}]"
        if isinstance(text, str):
            errors.extend(FieldError(path, m) for m in _constraint_problems(text))
    for index, pref in _items(placement, "preferences"):
        spread = pref.get("spread") if isinstance(pref, dict) else None
        if isinstance(spread, str):
            try:
                parse_spread(spread)
            except ValueError as exc:
                errors.append(FieldError(f"spec.placement.preferences[{index}].spread", str(exc)))
    return errors


def _constraint_problems(text: str) -> list[str]:
    try:
        key, _, value = parse_constraint(text)
    except ValueError as exc:
        return [str(exc)]
    if key == "node.role" and value.lower() not in ("manager", "worker"):
        return [f"invalid constraint {_quote(text)}: node.role is manager or worker"]
    if key == "node.ip":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return [f"invalid constraint {_quote(text)}: node.ip takes an address or a CIDR "
                    "such as 10.0.0.0/24"]
    return []


def _service_ports(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    endpoint = _obj(spec, "endpoint")
    seen: dict[tuple[Any, Any], int] = {}
    for index, port in _items(endpoint, "ports"):
        if not isinstance(port, dict):
            continue
        path = f"spec.endpoint.ports[{index}]"
        published, protocol = port.get("published"), port.get("protocol", "tcp")
        if published is not None:
            first = seen.setdefault((published, protocol), index)
            if first != index:
                errors.append(FieldError(f"{path}.published", f"port {published}/{protocol} is "
                                         f"already published by ports[{first}]"))
        if endpoint.get("mode") == "dnsrr" and port.get("mode", "ingress") == "ingress":
            # The routing mesh balances over a VIP, which dnsrr services do not have.
            errors.append(FieldError(f"{path}.mode", "endpoint mode dnsrr cannot publish in "
                                     "ingress mode; use mode: host, or endpoint mode vip"))
    return errors


def _service_template(template: dict[str, Any]) -> list[FieldError]:
    return [*_template_mounts(template), *_template_healthcheck(template),
            *_template_resources(template)]


def _template_mounts(template: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for index, mount in _items(template, "mounts"):
        if not isinstance(mount, dict):
            continue
        path = f"spec.template.mounts[{index}]"
        target, source, kind = mount.get("target"), mount.get("source"), mount.get("type")
        if isinstance(target, str) and target and not target.startswith("/"):
            errors.append(FieldError(f"{path}.target", f"must be an absolute path, got "
                                     f"{_quote(target)}"))
        if kind == "bind" and not source:
            errors.append(FieldError(f"{path}.source", "required for a bind mount: the host "
                                     "path to mount"))
        elif kind == "bind" and isinstance(source, str) and not source.startswith("/"):
            errors.append(FieldError(f"{path}.source", f"a bind mount's source must be an "
                                     f"absolute host path, got {_quote(source)}"))
        if kind == "tmpfs" and source:
            errors.append(FieldError(f"{path}.source", "a tmpfs mount takes no source"))
    return errors


def _template_healthcheck(template: dict[str, Any]) -> list[FieldError]:
    test = _obj(template, "healthcheck").get("test")
    if not isinstance(test, list) or not test:
        return []
    path = "spec.template.healthcheck.test"
    if test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        return [FieldError(f"{path}[0]", f'must be NONE, CMD or CMD-SHELL, got {_describe(test[0])}'
                           ' (write [CMD, prog, arg...] or [CMD-SHELL, "command line"])')]
    if test[0] != "NONE" and len(test) < 2:
        return [FieldError(path, f"{test[0]} needs the command to run after it")]
    return []


def _template_resources(template: dict[str, Any]) -> list[FieldError]:
    resources = _obj(template, "resources")
    limits, reservations = _obj(resources, "limits"), _obj(resources, "reservations")
    errors: list[FieldError] = []
    for field, parse in (("cpus", units.parse_cpus), ("memory", units.parse_size)):
        try:
            limit = parse(limits[field]) if field in limits else None
            reserved = parse(reservations[field]) if field in reservations else None
        except (ValueError, TypeError):
            continue  # malformed values are reported by the schema
        if limit is not None and reserved is not None and reserved > limit:
            errors.append(FieldError(f"spec.template.resources.reservations.{field}",
                                     f"reserves more than the limit ({reservations[field]} > "
                                     f"{limits[field]})"))
    return errors


# Swarm's limit for secrets and configs; it also keeps each object well under etcd's
# default 1.5 MiB request size once base64 and JSON have inflated it.
MAX_SECRET_BYTES = 500 * 1024


def _check_secret(doc: dict[str, Any]) -> list[FieldError]:
    # Whether spec.data decodes at all is the schema's `format: base64`; this checks the
    # decoded size, which the schema cannot express.
    data = _obj(doc, "spec").get("data")
    if not isinstance(data, str):
        return []
    try:
        size = len(decode_base64(data))
    except ValueError:
        return []
    if size > MAX_SECRET_BYTES:
        return [FieldError("spec.data", f"is {size} bytes decoded; a secret holds at most "
                                        f"{MAX_SECRET_BYTES} bytes (500 KiB)")]
    return []


def _check_config(doc: dict[str, Any]) -> list[FieldError]:
    data = _obj(doc, "spec").get("data")
    if isinstance(data, str) and len(data.encode()) > MAX_SECRET_BYTES:
        return [FieldError("spec.data", f"is {len(data.encode())} bytes; a config holds at "
                                        f"most {MAX_SECRET_BYTES} bytes (500 KiB)")]
    return []


def _check_network(doc: dict[str, Any]) -> list[FieldError]:
    spec = _obj(doc, "spec")
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
    spec = _obj(doc, "spec")
    return [*_crd_names(doc, spec), *_crd_versions(spec)]


def _crd_names(doc: dict[str, Any], spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    names = _obj(spec, "names")
    kind, plural, group = names.get("kind"), names.get("plural"), spec.get("group")
    if isinstance(kind, str) and kind and not _KIND_NAME_RE.match(kind):
        errors.append(FieldError("spec.names.kind", f"must be CamelCase starting with a capital "
                                 f"letter, such as Website; got {_quote(kind)}"))
    for field in ("plural", "singular"):
        value = names.get(field)
        if isinstance(value, str) and value and not is_dns_label(value):
            errors.append(FieldError(f"spec.names.{field}", f"must be a lowercase DNS label such "
                                     f"as websites; got {_quote(value)}"))
    for index, short in _items(names, "shortNames"):
        if isinstance(short, str) and short and not is_dns_label(short):
            errors.append(FieldError(f"spec.names.shortNames[{index}]",
                                     f"must be a lowercase DNS label; got {_quote(short)}"))
    if isinstance(group, str) and group and not is_dns_subdomain(group):
        errors.append(FieldError("spec.group", f"must be a lowercase domain such as example.com;"
                                 f" got {_quote(group)}"))
    name = _obj(doc, "metadata").get("name")
    expected = f"{plural}.{group}"
    if not errors and isinstance(plural, str) and isinstance(group, str) and name != expected:
        got = _quote(name) if isinstance(name, str) else _describe(name)
        errors.append(FieldError("metadata.name", f'must be "{expected}" (<plural>.<group>), '
                                                  f"got {got}"))
    return errors


def _crd_versions(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    versions = _items(spec, "versions")
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
                                                     f" got {_quote(name)}"))
        errors.extend(_crd_schema(_obj(version, "schema"), f"{path}.schema.openAPIV3Schema"))
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
                                                 f'schema, got {_describe(schema.get("type"))}'))
        schema = {**schema, "type": "object"}  # said once; check the rest as if it were
    _check_schema_node(schema, path, errors)
    return errors


_SCHEMA_TYPES = ("object", "array", "string", "integer", "number", "boolean")


def _check_schema_node(node: dict[str, Any], path: str, errors: list[FieldError]) -> None:
    """Enough of a meta-schema that the validator never trips on a user's schema."""
    type_name = node.get("type")
    if type_name is not None and type_name not in _SCHEMA_TYPES:
        errors.append(FieldError(f"{path}.type", f"must be one of {', '.join(_SCHEMA_TYPES)}; "
                                                 f"got {_describe(type_name)}"))
    _check_schema_keywords(node, path, errors)
    props = node.get("properties")
    if isinstance(props, dict):
        for key, sub in props.items():
            _check_subschema(sub, _child(f"{path}.properties", str(key)), errors)
    for keyword in ("items", "additionalProperties"):
        sub = node.get(keyword)
        if keyword == "additionalProperties" and isinstance(sub, bool):
            continue
        if sub is not None:
            _check_subschema(sub, f"{path}.{keyword}", errors)
    if "default" in node:
        errors.extend(FieldError(e.path, f"default does not fit its schema: {e.message}")
                      for e in validate(node["default"], node, f"{path}.default"))


def _check_subschema(sub: Any, path: str, errors: list[FieldError]) -> None:
    if isinstance(sub, dict):
        _check_schema_node(sub, path, errors)
    else:
        errors.append(FieldError(path, f"must be a schema (an object), got {_describe(sub)}"))


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
                                                          f"{_describe(node[keyword])}"))
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


# ---------------------------------------------------------------------------------------
# Admission

_ENVELOPE_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
# Kubernetes CRD files say apiextensions.k8s.io/v1; accepting it lets them apply unchanged.
_CRD_API_ALIASES = ("apiextensions.k8s.io/v1",)

_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_TIMESTAMP: Schema = {"type": "string", "nullable": True}
METADATA_SCHEMA: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string", "nullable": True},
        "uid": {"type": "string"},
        "generation": {"type": "integer", "minimum": 0},
        "resourceVersion": {"x-kubernetes-int-or-string": True},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {
            "type": "object", "required": ["kind", "name"],
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "name": {"type": "string"}, "uid": {"type": "string"},
                           "controller": {"type": "boolean"},
                           "blockOwnerDeletion": {"type": "boolean"}}}},
        "creationTimestamp": _TIMESTAMP,
        "deletionTimestamp": _TIMESTAMP,
    },
}
"""What ``metadata`` may hold: the fields of ``resource.ObjectMeta``."""


def admit(doc: dict[str, Any], registry: kinds.Registry, source: str = "") -> resource.Resource:
    """Check one incoming object and return it as a Resource with defaults applied.

    ``source`` says where the document came from (``file stack.yaml, document 2``) and ends
    up in the error message. ``doc`` itself is not modified. Raises ValidationError listing
    every problem found.
    """
    if not isinstance(doc, dict):
        raise ValidationError([FieldError("", "a manifest document must be a mapping with "
                                              f"apiVersion, kind, metadata and spec; got "
                                              f"{_describe(doc)}")], "", source)
    obj = _copy_json(doc)
    errors: list[FieldError] = []
    info = _admit_kind(obj, registry, errors)
    _admit_api_version(obj, info, errors)
    _admit_envelope_fields(obj, info, errors)
    _admit_metadata(obj, info, errors)
    if info is not None:
        _admit_body(obj, info, errors)
        check = SEMANTIC_CHECKS.get(info.kind) if info.builtin else None
        errors.extend(check(obj) if check is not None else [])
        if info.kind == kinds.CRD_KIND and not errors:
            errors.extend(_crd_registration(obj, registry))
    if errors or info is None:  # an unknown kind always comes with an error
        raise ValidationError(list(dict.fromkeys(errors)), _ref(obj, info), source)
    admitted = resource.Resource.from_dict(obj)
    admitted.apiVersion = info.api_version
    return admitted


def _copy_json(value: Any) -> Any:
    """Deep copy of decoded YAML/JSON; several times faster than ``copy.deepcopy``."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value  # str, int, float, bool, None (and dates from YAML) are immutable


def _ref(obj: dict[str, Any], info: kinds.KindInfo | None) -> str:
    """``services/web``: how the object is named in messages (``kubectl``'s notation)."""
    kind = info.plural if info is not None else str(obj.get("kind") or "").lower()
    meta = _obj(obj, "metadata")
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    ref = "/".join(part for part in (kind, name) if part)
    namespace = meta.get("namespace")
    if info is not None and info.namespaced and isinstance(namespace, str) \
            and namespace not in ("", resource.DEFAULT_NAMESPACE):
        ref += f" in namespace {namespace}"
    return ref


def _admit_kind(obj: dict[str, Any], registry: kinds.Registry,
                errors: list[FieldError]) -> kinds.KindInfo | None:
    kind = obj.get("kind")
    if kind is None or kind == "":
        errors.append(FieldError("kind", "required field missing; write e.g. kind: Service"))
        return None
    if not isinstance(kind, str):
        errors.append(FieldError("kind", f"must be a string, got {_describe(kind)}"))
        return None
    try:
        info = registry.lookup(kind)
    except kinds.UnknownKindError as exc:
        guess = _suggest(kind, (i.kind for i in registry.all()))
        hint = f'; did you mean "{guess}"?' if guess else ""
        errors.append(FieldError("kind", f"{exc}{hint}"))
        return None
    if info.kind != kind:
        # swctl accepts "svc" on the command line, but a manifest names the kind exactly.
        errors.append(FieldError("kind", f'must be "{info.kind}" (the exact kind name), '
                                         f"got {_quote(kind)}"))
    return info


def _admit_api_version(obj: dict[str, Any], info: kinds.KindInfo | None,
                       errors: list[FieldError]) -> None:
    expected = info.api_version if info is not None else resource.API_VERSION
    given = obj.get("apiVersion")
    if given is None or given == "":
        errors.append(FieldError("apiVersion", f"required field missing; write apiVersion: "
                                               f"{expected}"))
        return
    if info is None or given == expected:
        return
    if info.kind == kinds.CRD_KIND and given in _CRD_API_ALIASES:
        obj["apiVersion"] = expected
        return
    errors.append(FieldError("apiVersion", f"must be {expected} for kind {info.kind}, got "
                                           f"{_describe(given)}; write apiVersion: {expected}"))


def _admit_envelope_fields(obj: dict[str, Any], info: kinds.KindInfo | None,
                           errors: list[FieldError]) -> None:
    spec_fields = _obj(_obj(_obj(info.schema if info else {}, "properties"), "spec"),
                       "properties")
    for key in obj:
        if key in _ENVELOPE_FIELDS:
            continue
        if isinstance(key, str) and key in spec_fields:
            # Kubernetes ConfigMaps and Secrets keep `data` at the top; Shoal keeps it in spec.
            message = f'unknown field "{key}"; did you mean "spec.{key}"?'
        else:
            message = _unknown_field(str(key), dict.fromkeys(_ENVELOPE_FIELDS))
        errors.append(FieldError(_child("", str(key)), message))


def _admit_metadata(obj: dict[str, Any], info: kinds.KindInfo | None,
                    errors: list[FieldError]) -> None:
    meta = obj.get("metadata")
    if meta is None:
        errors.append(FieldError("metadata", "required field missing; give at least "
                                             "metadata: {name: ...}"))
        return
    if not isinstance(meta, dict):
        errors.append(FieldError("metadata", f"must be an object, got {_describe(meta)}"))
        return
    errors.extend(validate(meta, METADATA_SCHEMA, "metadata"))
    name = meta.get("name")
    if isinstance(name, str) and name:
        message = _name_error(name)
        if message:
            errors.append(FieldError("metadata.name", message))
    elif name == "":
        errors.append(FieldError("metadata.name", "must not be empty"))
    if info is not None:
        _admit_namespace(meta, info, errors)


def _admit_namespace(meta: dict[str, Any], info: kinds.KindInfo,
                     errors: list[FieldError]) -> None:
    namespace = meta.get("namespace")
    if not info.namespaced:
        if namespace not in (None, ""):
            errors.append(FieldError("metadata.namespace", f"{info.plural} are cluster-scoped; "
                                                           "remove metadata.namespace"))
        meta.pop("namespace", None)
    elif namespace is None or namespace == "":
        meta["namespace"] = resource.DEFAULT_NAMESPACE
    elif isinstance(namespace, str) and not is_dns_label(namespace):
        message = _name_error(namespace, dots=False) or ""
        errors.append(FieldError("metadata.namespace", message))


def _body_schema(info: kinds.KindInfo) -> Schema:
    """The part of the kind's schema that covers ``spec`` and ``status``."""
    top = info.schema
    props = _obj(top, "properties")
    free = top.get("x-kubernetes-preserve-unknown-fields") is True
    body: dict[str, Any] = {}
    for key in ("spec", "status"):
        if key in props:
            body[key] = props[key]
        elif free:
            body[key] = {"x-kubernetes-preserve-unknown-fields": True}
    required = [r for r in top.get("required") or () if r in body]
    return {"type": "object", "properties": body, "required": required}


def _admit_body(obj: dict[str, Any], info: kinds.KindInfo, errors: list[FieldError]) -> None:
    schema = _body_schema(info)
    body: dict[str, Any] = {key: obj[key] for key in ("spec", "status") if key in obj}
    apply_defaults(body, schema)
    obj.update(body)
    errors.extend(validate(body, schema))


def _crd_registration(obj: dict[str, Any], registry: kinds.Registry) -> list[FieldError]:
    """Would registering this CRD clash with a kind that already exists?"""
    try:
        registry.copy().add(kinds.kind_info_from_crd(obj))
    except ValueError as exc:
        return [FieldError("spec.names", str(exc))]
    return []
