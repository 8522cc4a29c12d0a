"""How a resource is laid out in etcd: its key, and its value as compact JSON.

JSON goes through orjson: every write encodes an object and every watched event decodes
one in each process that watches the kind, so the codec is the hottest code in the system.

``resourceVersion`` is not stored in the value: it *is* the key's ``mod_revision``, set on
every read, so it can never disagree with etcd. Each decoded object remembers a digest of
its spec, so an update can tell whether ``spec`` changed (and bump ``generation``) without
reading the object again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import structlog

from shoal.crds import kinds, resource
from shoal.store import projections

log = structlog.get_logger("shoal.store.codec")

# Non-string keys are written as strings, as the stdlib json did: a YAML manifest can
# carry integer keys (``1: one`` in labels) and must not make a write fail.
_OPTIONS = orjson.OPT_NON_STR_KEYS
_SPEC_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS


def registry_prefix(prefix: str, section: str = "registry") -> str:
    """Where objects live: ``<prefix>/registry/``; a projection section (``dataplane``,
    ``shoal.store.projections``) lays out its copies the same way under its own name."""
    return f"{prefix.rstrip('/')}/{section}/"


def kind_prefix(prefix: str, info: kinds.KindInfo, namespace: str | None = None,
                section: str = "registry") -> bytes:
    """Keys of every object of a kind, or of one namespace of it."""
    base = f"{registry_prefix(prefix, section)}{info.plural}/"
    if info.namespaced and namespace:
        base += f"{namespace}/"
    return base.encode()


def object_key(prefix: str, info: kinds.KindInfo, name: str, namespace: str | None,
               section: str = "registry") -> bytes:
    if info.namespaced:
        return (f"{registry_prefix(prefix, section)}{info.plural}/{namespace or 'default'}/"
                f"{name}").encode()
    return f"{registry_prefix(prefix, section)}{info.plural}/{name}".encode()


def spec_digest(spec: dict[str, Any]) -> int:
    return hash(orjson.dumps(spec, option=_SPEC_OPTIONS))


def encode(obj: resource.Resource) -> bytes:
    data = obj.to_dict(deep=False)
    data["metadata"].pop("resourceVersion", None)
    return orjson.dumps(data, option=_OPTIONS)


class UndecodableError(ValueError):
    """A stored value that is not a resource (hand-written garbage, a foreign tool)."""


# Values many decoded tasks repeat, one held per key: (namespace, service, service
# generation) -> its tasks' template; owner uid -> its tasks' ownerReferences.
_templates: dict[tuple[Any, str, int], dict[str, Any]] = {}
_owners: dict[str, list[Any]] = {}
_HELD = 4096  # keys per table; past that (old generations) a table starts over


def _held(table: dict[Any, Any], key: Any, value: Any) -> Any:
    """The equal value already held under ``key`` (``value`` is then dropped), else
    ``value``, now held. Only an equal value is ever handed out, so content never changes;
    like every decoded object, it is read-only."""
    held = table.get(key)
    if held is not None and held == value:
        return held
    if len(table) >= _HELD:
        table.clear()
    table[key] = value
    return value


def _share_repeated(data: dict[str, Any]) -> None:
    """Tasks of one service generation all carry the same template (the orchestrator
    writes its service's), and every task of a service names the same owner: a decoded
    task takes the equal ones already held instead of keeping its own copies. 100,000
    cached tasks then hold a few hundred templates, not 100,000 — three tracked objects
    fewer each for the collector to walk, ~500 bytes less memory each."""
    spec = data.get("spec")
    if type(spec) is not dict:
        return
    template, name, gen = spec.get("template"), spec.get("serviceName"), spec.get(
        "serviceGeneration")
    if type(template) is not dict or type(name) is not str or type(gen) is not int:
        return
    meta = data.get("metadata")
    if type(meta) is not dict:
        return
    spec["template"] = _held(_templates, (meta.get("namespace"), name, gen), template)
    owners = meta.get("ownerReferences")
    if type(owners) is list and len(owners) == 1 and type(owners[0]) is dict:
        uid = owners[0].get("uid")
        if type(uid) is str:
            meta["ownerReferences"] = _held(_owners, uid, owners)


def decode(value: bytes, mod_revision: int) -> resource.Resource:
    try:
        data = orjson.loads(value)
        if not isinstance(data, dict):
            raise TypeError(f"top level is {type(data).__name__}, not an object")
        for field in ("metadata", "spec", "status"):
            if data.get(field) is not None and not isinstance(data[field], dict):
                raise TypeError(f"{field} is {type(data[field]).__name__}, not an object")
        _share_repeated(data)
        obj = resource.Resource.from_fresh_dict(data)
        # Computing the digest here also proves the spec is JSON-serialisable.
        digest = spec_digest(obj.spec)
    except (ValueError, TypeError, AttributeError) as exc:
        raise UndecodableError(str(exc)) from None
    obj.metadata.resourceVersion = str(mod_revision)
    remember_spec(obj, digest)
    if projections.projects(obj.kind):
        remember_memo(obj, projections.memo_of(obj, digest))
    return obj


#: Told (key, revision, why) of every value a list or watch in this process skipped.
UnreadableListener = Callable[[bytes, int, str], None]
_unreadable_listeners: list[UnreadableListener] = []


def add_unreadable_listener(listener: UnreadableListener) -> Callable[[], None]:
    """Have ``listener`` told of each value skipped as unreadable (the controller-manager
    turns them into Events, ``shoal.controllers.unreadable``); returns its remover. Called
    on the reading coroutine: a listener must only note the report, never block."""
    _unreadable_listeners.append(listener)

    def remove() -> None:
        if listener in _unreadable_listeners:
            _unreadable_listeners.remove(listener)
    return remove


def _skipped(key: bytes, mod_revision: int, why: str) -> None:
    for listener in list(_unreadable_listeners):
        try:
            listener(key, mod_revision, why)
        except Exception as exc:  # a report must never break the read that skipped
            log.warning("unreadable listener failed", error=str(exc))


def try_decode(key: bytes, value: bytes, mod_revision: int) -> resource.Resource | None:
    """Decode, or log and return None: one bad value must not stop a list or a watch."""
    try:
        return decode(value, mod_revision)
    except UndecodableError as exc:
        log.warning("skipping undecodable object", key=key.decode(errors="replace"),
                    revision=mod_revision, error=str(exc))
        _skipped(key, mod_revision, str(exc))
        return None


def identity_error(info: kinds.KindInfo, kind_prefix: bytes, key: bytes,
                   obj: resource.Resource) -> str | None:
    """Why ``obj`` cannot be the object at ``key`` (``kind_prefix``: the prefix of every
    object of ``info``, without a namespace), or None when it is.

    Every cache is keyed by what an object says it is, every delete by its key: a value
    naming another kind, name or namespace than its key (hand-written, or copied from
    another key) would sit in a cache under a name nobody can delete, or be reconciled as
    an object it is not. Such a value is treated like any other undecodable one."""
    rest = key[len(kind_prefix):].decode(errors="replace")
    namespace, _, name = rest.rpartition("/") if info.namespaced else ("", "", rest)
    meta = obj.metadata
    if obj.kind != info.kind:
        return f"the value is a {obj.kind!r}, stored under {info.plural}"
    if meta.name != name:
        return f"the value names itself {meta.name!r}, stored under the name {name!r}"
    stored_ns = meta.namespace if info.namespaced else meta.namespace or None
    if stored_ns != (namespace if info.namespaced else None):
        return (f"the value is in namespace {stored_ns!r}, stored under "
                f"{namespace or 'no namespace'!r}")
    return None


def decode_at(info: kinds.KindInfo, kind_prefix: bytes, key: bytes, value: bytes,
              mod_revision: int) -> resource.Resource | None:
    """``try_decode``, also skipping (with a warning) a value that is not the object its
    key names (``identity_error``): what lists and watches of one kind read through."""
    obj = try_decode(key, value, mod_revision)
    if obj is None:
        return None
    problem = identity_error(info, kind_prefix, key, obj)
    if problem is not None:
        log.warning("skipping object stored under another identity",
                    key=key.decode(errors="replace"), revision=mod_revision, error=problem)
        _skipped(key, mod_revision, problem)
        return None
    return obj


def remember_spec(obj: resource.Resource, digest: int | None = None) -> None:
    """Record the spec as stored, so the next update knows whether it changed.

    An attribute of the codec's own, not a field of Resource, set as an attribute rather
    than through ``obj.__dict__``: touching ``__dict__`` makes CPython build a real dict
    for the instance, one more object per cached resource for the collector to walk."""
    setattr(obj, "_stored_spec_digest",  # noqa: B010 (mypy: not a declared attribute)
            spec_digest(obj.spec) if digest is None else digest)


def remember_memo(obj: resource.Resource, memo: projections.Memo) -> None:
    """Record what the object's projections held as stored (``shoal.store.projections``),
    so the next write rewrites them only if that changed. Set like the spec digest."""
    setattr(obj, "_stored_memo", memo)  # noqa: B010 (mypy: not a declared attribute)


def stored_memo(obj: resource.Resource) -> projections.Memo | None:
    value = getattr(obj, "_stored_memo", None)
    return value if isinstance(value, projections.Memo) else None


def with_status(obj: resource.Resource, status: dict[str, Any]) -> resource.Resource:
    """``obj`` with another ``status``, sharing its envelope and spec (the store copies the
    envelope before it writes), and still knowing the spec it was stored with — so a
    status write does not count as a spec change. ``copy.copy`` did the same at twice the
    cost: status writes are a third of all writes."""
    out = resource.Resource(obj.kind, obj.metadata, obj.spec, status, obj.apiVersion)
    digest = stored_spec_digest(obj)
    if digest is not None:
        remember_spec(out, digest)
    memo = stored_memo(obj)
    if memo is not None:
        remember_memo(out, memo)
    return out


def stored_spec_digest(obj: resource.Resource) -> int | None:
    value = getattr(obj, "_stored_spec_digest", None)
    return value if isinstance(value, int) else None
