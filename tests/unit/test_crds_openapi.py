"""crds.openapi: structural defaulting, the schema keywords, formats and their messages."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.crds import kinds, openapi
from tests.unit.crds_support import errors_of, service


@pytest.fixture
def registry() -> kinds.Registry:
    return kinds.Registry.builtin()


# --- defaults -----------------------------------------------------------------------------


def test_apply_defaults_only_creates_objects_with_a_default() -> None:
    schema = {"type": "object", "properties": {
        "made": {"type": "object", "default": {}, "properties": {"a": {"default": 1}}},
        "absent": {"type": "object", "properties": {"b": {"default": 2}}},
        "present": {"type": "object", "properties": {"c": {"default": 3}}},
        "list": {"type": "array", "items": {"type": "object",
                                            "properties": {"d": {"default": 4}}}},
        "map": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"e": {"default": 5}}}},
    }}
    doc: dict[str, Any] = {"present": {}, "list": [{}, {"d": 0}], "map": {"k": {}}}
    openapi.apply_defaults(doc, schema)
    assert doc == {"made": {"a": 1}, "present": {"c": 3}, "list": [{"d": 4}, {"d": 0}],
                   "map": {"k": {"e": 5}}}


def test_defaults_are_copies() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "default": []}}}
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    openapi.apply_defaults(first, schema)
    openapi.apply_defaults(second, schema)
    first["a"].append(1)
    assert second == {"a": []}


# --- schema messages ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ({"replicas": "3"}, 'spec.replicas: must be an integer, got string "3"'),
    ({"replicas": True}, "spec.replicas: must be an integer, got boolean true"),
    ({"replicas": 2.5}, "spec.replicas: must be an integer, got number 2.5"),
    ({"updateConfig": {"maxFailureRatio": 1.5}},
     "spec.updateConfig.maxFailureRatio: must be <= 1, got 1.5"),
    ({"rollbackConfig": {"failureAction": "rollback"}},
     'spec.rollbackConfig.failureAction: must be one of pause, continue; got "rollback"'),
    ({"endpoint": {"ports": [{"target": 70000}]}},
     "spec.endpoint.ports[0].target: must be <= 65535, got 70000"),
    ({"endpoint": {"ports": [{"published": 80}]}},
     "spec.endpoint.ports[0].target: required field missing"),
    ({"template": {"image": ""}}, "spec.template.image: must not be empty"),
    ({"template": {"image": "x", "resources": {"limits": {"memory": "64X"}}}},
     'spec.template.resources.limits.memory: invalid size "64X": unknown unit "X"; use bytes or'
     " a number with a unit such as 512Ki, 64Mi, 1Gi, 1G or 64m"),
    ({"template": {"image": "x", "stopGracePeriod": 1.5}},
     "spec.template.stopGracePeriod: must be an integer or a string, got number 1.5"),
    ({"template": {"image": "x", "imagee": "y"}},
     'spec.template.imagee: unknown field "imagee"; did you mean "image"?'),
    ({"restart_policy": {}},
     'spec.restart_policy: unknown field "restart_policy"; did you mean "restartPolicy"?'),
    ({"networks": "frontend"}, 'spec.networks: must be an array, got string "frontend"'),
])
def test_schema_messages(registry: kinds.Registry, spec: dict[str, Any], message: str) -> None:
    assert errors_of(service(**spec), registry) == [message]


def test_unknown_field_without_close_match_lists_fields() -> None:
    schema = {"type": "object", "properties": {"alpha": {}, "beta": {}}}
    [error] = openapi.validate({"zzz": 1}, schema, "spec")
    assert str(error) == 'spec.zzz: unknown field "zzz"; known fields are alpha, beta'


def test_validate_keywords() -> None:
    schema = {"type": "object", "properties": {
        "n": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        "s": {"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"},
        "l": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "integer"}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "maybe": {"type": "string", "nullable": True},
        "ip": {"type": "string", "format": "ip"},
        "net": {"type": "string", "format": "cidr"},
        "odd key": {"type": "string"},
    }}
    doc = {"n": 0, "s": "ABCD", "l": [], "free": {"x": 1}, "maybe": None, "ip": "10.0.0.300",
           "net": "10.0.0.1/24", "odd key": 1}
    assert [str(e) for e in openapi.validate(doc, schema)] == [
        "n: must be > 0, got 0",
        "s: must be at most 3 characters long, got 4",
        's: must match the pattern "^[a-z]+$", got "ABCD"',
        "l: must have at least 1 item, got 0",
        'ip: invalid IP address "10.0.0.300": write an address such as 10.0.9.1',
        'net: invalid CIDR "10.0.0.1/24": host bits are set; did you mean 10.0.0.0/24?',
        '["odd key"]: must be a string, got integer 1; put it in quotes to keep it as text',
    ]


def test_decode_base64_ignores_line_breaks() -> None:
    assert openapi.decode_base64("aGVs\nbG8=\n") == b"hello"


def test_a_schema_whose_required_lists_a_map_validates_without_crashing() -> None:
    """Fuzzing found it: a user CRD whose schema's ``required`` held a map (admission
    took it: a CRD's schema is the user's) made every object of that kind raise
    TypeError (unhashable) in validation, an internal error in apply."""
    schema = {"type": "object", "required": [{"name": "x"}, "domain"],
              "properties": {"domain": {"type": "string"}}}
    errors = openapi.validate({}, schema, "spec")
    assert [str(e) for e in errors] == ["spec.domain: required field missing"]
