"""Admission of incoming objects: the envelope, then the schema, then the per-kind checks.

``admit`` is the one door every object goes through — ``swctl apply`` before it writes,
the store before it accepts — so a manifest is judged the same way wherever it comes from.
It works in three passes and reports everything it finds, not just the first problem,
because a user fixing a 40-line manifest wants the whole list at once:

1. the envelope (``apiVersion``, ``kind``, ``metadata``), checked here in code because its
   rules (name syntax, namespace scope) are the same for every kind;
2. ``spec`` and ``status`` against the kind's openAPIV3Schema, after structural defaulting
   in the Kubernetes manner (``openapi``) — built-in kinds and user-defined kinds take
   the same path;
3. per-kind semantic checks that a schema cannot express (``semantics``).

Messages name the field path and say what to write instead; ``ValidationError`` adds which
object and which file the problem is in, one line per problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shoal.crds import kinds, openapi, resource, semantics
from shoal.crds.fielderrors import FieldError, child, describe, quote, suggest
from shoal.crds.names import name_rule, namespace_error
from shoal.crds.openapi import Schema


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
                                              f"{describe(doc)}")], "", source)
    obj = _copy_json(doc)
    errors: list[FieldError] = []
    info = _admit_kind(obj, registry, errors)
    _admit_api_version(obj, info, errors)
    _admit_envelope_fields(obj, info, errors)
    _admit_metadata(obj, info, errors)
    if info is not None:
        _admit_body(obj, info, errors)
        check = semantics.SEMANTIC_CHECKS.get(info.kind) if info.builtin else None
        errors.extend(_unreported(check(obj) if check is not None else [], errors))
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
    given = obj.get("kind")
    # A kind that is not a string is reported on its own line; repeating its value (a
    # list of a thousand items, say) in every message's ref would only bury the messages.
    kind = info.plural if info is not None else given.lower() if isinstance(given, str) else ""
    meta = semantics.section(obj, "metadata")
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
        errors.append(FieldError("kind", f"must be a string, got {describe(kind)}"))
        return None
    try:
        info = registry.lookup(kind)
    except kinds.UnknownKindError as exc:
        guess = suggest(kind, (i.kind for i in registry.all()))
        hint = f'; did you mean "{guess}"?' if guess else ""
        errors.append(FieldError("kind", f"{exc}{hint}"))
        return None
    if info.kind != kind:
        # swctl accepts "svc" on the command line, but a manifest names the kind exactly.
        errors.append(FieldError("kind", f'must be "{info.kind}" (the exact kind name), '
                                         f"got {quote(kind)}"))
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
                                           f"{describe(given)}; write apiVersion: {expected}"))


def _admit_envelope_fields(obj: dict[str, Any], info: kinds.KindInfo | None,
                           errors: list[FieldError]) -> None:
    props = semantics.section(info.schema if info else {}, "properties")
    spec_fields = semantics.section(semantics.section(props, "spec"), "properties")
    for key in obj:
        if key in _ENVELOPE_FIELDS:
            continue
        if isinstance(key, str) and key in spec_fields:
            # Kubernetes ConfigMaps and Secrets keep `data` at the top; Shoal keeps it in spec.
            message = f'unknown field "{key}"; did you mean "spec.{key}"?'
        else:
            message = openapi.unknown_field(str(key), dict.fromkeys(_ENVELOPE_FIELDS))
        errors.append(FieldError(child("", str(key)), message))


def _admit_metadata(obj: dict[str, Any], info: kinds.KindInfo | None,
                    errors: list[FieldError]) -> None:
    meta = obj.get("metadata")
    if meta is None:
        errors.append(FieldError("metadata", "required field missing; give at least "
                                             "metadata: {name: ...}"))
        return
    if not isinstance(meta, dict):
        errors.append(FieldError("metadata", f"must be an object, got {describe(meta)}"))
        return
    errors.extend(openapi.validate(meta, METADATA_SCHEMA, "metadata"))
    name = meta.get("name")
    if isinstance(name, str) and name:
        # Per kind: Docker's names for what a Swarm user names (crds.names says which).
        message = name_rule(info.kind if info is not None else None).error(name)
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
    elif isinstance(namespace, str):
        # A namespace is a stack: Docker's stack names (``my_app``), by crds.names' rule.
        message = namespace_error(namespace)
        if message:
            errors.append(FieldError("metadata.namespace", message))


def _body_schema(info: kinds.KindInfo) -> Schema:
    """The part of the kind's schema that covers ``spec`` and ``status``."""
    top = info.schema
    props = semantics.section(top, "properties")
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
    openapi.apply_defaults(body, schema)
    obj.update(body)
    errors.extend(openapi.validate(body, schema))


def _unreported(found: list[FieldError], reported: list[FieldError]) -> list[FieldError]:
    """The semantic errors about fields no earlier pass has spoken about: a field the schema
    found to be of the wrong type gets that one message, not a second one in other words."""
    paths = {e.path for e in reported}
    return [e for e in found if not any(_same_field(e.path, p) for p in paths)]


def _same_field(a: str, b: str) -> bool:
    """Is one path the other or inside it (``spec.x`` and ``spec.x[0].y``)?"""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return long == short or (long.startswith(short) and long[len(short)] in ".[")


def _crd_registration(obj: dict[str, Any], registry: kinds.Registry) -> list[FieldError]:
    """Would registering this CRD clash with a kind that already exists?"""
    try:
        registry.copy().add(kinds.kind_info_from_crd(obj))
    except ValueError as exc:
        return [FieldError("spec.names", str(exc))]
    return []
