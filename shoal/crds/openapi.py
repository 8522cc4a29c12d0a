"""The subset of OpenAPI v3 that CRD schemas use: structural defaulting, validation, formats.

The validator implements ``type``, ``properties``, ``required``, ``items``, ``enum``,
bounds, lengths, ``pattern``, item counts, ``additionalProperties``, ``default``,
``nullable``, ``format`` and the ``x-kubernetes-preserve-unknown-fields`` /
``x-kubernetes-int-or-string`` extensions, plus Shoal's own ``x-shoal-string-or-object``
(a value written either as a bare name or as an object with that name and more, as
Compose and Docker write a service's networks: ``app`` or ``{name: app, aliases: [db]}``;
string keywords then check the string, ``properties`` the object). Keywords it does not
know (``anyOf``, ``x-kubernetes-validations``, ...) are ignored rather than refused, so
existing CRD files still apply. Unlike Kubernetes, which silently prunes undeclared
fields, undeclared fields are errors with a "did you mean" hint: a typo such as
``replica: 3`` must not quietly leave the service at one replica.

Built-in kinds and user-defined kinds take the same path through this module; it knows
nothing about any particular kind (that is ``semantics``) or about the envelope (that is
``admission``).
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from shoal.crds import units
from shoal.crds.fielderrors import FieldError, child, describe, quote, suggest

Schema = dict[str, Any]


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"



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
    return ("type" in schema or bool(schema.get("x-kubernetes-int-or-string"))
            or bool(schema.get(STRING_OR_OBJECT)))


#: Shoal's extension: the value is a string or an object (see the module docstring).
STRING_OR_OBJECT = "x-shoal-string-or-object"


def _check_type(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> bool:
    if schema.get(STRING_OR_OBJECT):
        if isinstance(value, str | dict):
            return True
        errors.append(FieldError(path, f"must be a string or an object, got {describe(value)}"))
        return False
    if schema.get("x-kubernetes-int-or-string"):
        if _is_type(value, "integer") or isinstance(value, str):
            return True
        errors.append(FieldError(path, f"must be an integer or a string, got {describe(value)}"))
        return False
    type_name = schema.get("type")
    if not isinstance(type_name, str) or _is_type(value, type_name):
        return True
    message = f"must be {_ARTICLES.get(type_name, type_name)}, got {describe(value)}"
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
    got = quote(value) if isinstance(value, str) else json.dumps(value, default=str)
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
                path, f"must match the pattern {json.dumps(pattern)}, got {quote(value)}"))


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
        if not isinstance(name, str):
            continue  # a user CRD's schema may list anything here; only names can match
        sub = props.get(name)
        nullable = isinstance(sub, dict) and sub.get("nullable")
        if name not in value or (value[name] is None and not nullable):
            errors.append(FieldError(child(path, str(name)), "required field missing"))
    extra = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    strict = schema.get("type") == "object" or bool(props) or extra is False
    for key, item in value.items():
        if not isinstance(key, str):
            errors.append(FieldError(path, f"field names must be strings, got {describe(key)}"))
        elif key in props:
            _check(item, props[key], child(path, key), errors)
        elif isinstance(extra, dict):
            _check(item, extra, child(path, key), errors)
        elif not (extra is True or preserve) and strict:
            errors.append(FieldError(child(path, key), unknown_field(key, props)))


def unknown_field(key: str, props: dict[str, Any]) -> str:
    guess = suggest(key, props)
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
            raise ValueError(f"invalid CIDR {quote(value)}: write an address block such as "
                             "10.0.9.0/24") from None
        raise ValueError(f"invalid CIDR {quote(value)}: host bits are set; did you mean "
                         f"{fixed}?") from None


def _format_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"invalid IP address {quote(value)}: write an address such as "
                         "10.0.9.1") from None


def _format_base64(value: str) -> None:
    try:
        decode_base64(value)
    except ValueError as exc:
        raise ValueError(f"{quote(value, 20)} {exc}") from None


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

