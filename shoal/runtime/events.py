"""Events: short, expiring records of what happened to an object, for ``swctl describe``.

An Event is an ordinary resource (kind Event, see ``shoal/crds/schemas/event.yaml``)
in the involved object's namespace (``default`` for cluster-scoped objects). Its name is
derived from what it says — object, type, reason, message, source — so reporting the same
thing again finds the same Event and bumps ``count`` instead of piling up copies.

Events are attached to an etcd lease of about an hour so they expire without a garbage
collector. One lease is shared by all events a process writes for a few minutes (a lease
per event would cost a grant per write); a repeat re-attaches the event to the current
lease, so an event lives for about an hour after it last happened. Events are never
fenced, even when a controller passes its fenced store: a note from an ex-leader is
harmless, and refusing it would hide what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import weakref

from shoal.crds import kinds, resource
from shoal.runtime import fenced
from shoal.store import client, codec, errors, etcd

NORMAL = "Normal"
WARNING = "Warning"

EVENT_TTL = 3600        # seconds an event outlives its last occurrence (give or take reuse)
LEASE_REUSE = 300.0     # seconds one lease is handed to new events before a fresh grant

_event_info: kinds.KindInfo | None = None


def event_kind() -> kinds.KindInfo:
    """The built-in Event kind."""
    global _event_info
    if _event_info is None:
        _event_info = kinds.Registry.builtin().by_kind("Event")
    return _event_info


@dataclasses.dataclass
class _LeaseSlot:
    lease: int = 0
    granted_at: float = 0.0
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


# Keyed by connection, not Store: fenced views share their base store's connection.
_leases: weakref.WeakKeyDictionary[etcd.EtcdClient, _LeaseSlot] = weakref.WeakKeyDictionary()


async def _event_lease(store: client.Store, fresh: bool = False) -> int:
    slot = _leases.setdefault(store.etcd, _LeaseSlot())
    async with slot.lock:
        now = asyncio.get_running_loop().time()
        if fresh or not slot.lease or now - slot.granted_at > LEASE_REUSE:
            slot.lease = await store.grant_lease(EVENT_TTL)
            slot.granted_at = now
        return slot.lease


def _namespace(obj: resource.Resource) -> str:
    return obj.metadata.namespace or resource.DEFAULT_NAMESPACE


def event_name(obj: resource.Resource, type_: str, reason: str, message: str,
               source: str) -> str:
    """``<object name>.<digest of what happened>``: the same report maps to the same Event."""
    digest = hashlib.sha256("\0".join([
        obj.kind, _namespace(obj), obj.name, obj.metadata.uid, type_, reason, message, source,
    ]).encode()).hexdigest()[:16]
    return f"{obj.name[:200]}.{digest}"  # stays within the 253-character name limit


async def record_event(store: client.Store, obj: resource.Resource, type_: str, reason: str,
                       message: str, source: str = "") -> resource.Resource:
    """Record that ``reason``/``message`` happened to ``obj``; returns the stored Event.

    ``type_`` is ``Normal`` or ``Warning``. A repeat of an identical event increments its
    ``count`` and moves ``lastTimestamp``.
    """
    if type_ not in (NORMAL, WARNING):
        raise ValueError(f'event type must be "Normal" or "Warning", got "{type_}"')
    info = event_kind()
    if isinstance(store, fenced.FencedStore):
        store = store.base
    name = event_name(obj, type_, reason, message, source)
    namespace = _namespace(obj)
    fresh_lease = False
    while True:
        lease = await _event_lease(store, fresh_lease)
        try:
            try:
                existing = await store.get(info, name, namespace)
            except errors.NotFoundError:
                return await _create(store, info, obj, name, namespace, type_, reason,
                                     message, source, lease)
            updated = await _bump(store, info, existing, lease)
            if updated is not None:
                return updated
        except errors.AlreadyExistsError:
            pass  # someone recorded the same event first: bump theirs
        except errors.UnavailableError:
            # Most likely the shared lease has expired under us (a long-idle process);
            # one retry with a new lease tells that apart from etcd really being down.
            if fresh_lease:
                raise
            fresh_lease = True


async def _create(store: client.Store, info: kinds.KindInfo, obj: resource.Resource,
                  name: str, namespace: str, type_: str, reason: str, message: str,
                  source: str, lease: int) -> resource.Resource:
    now = resource.now_rfc3339()
    involved = {"kind": obj.kind, "name": obj.name}
    if obj.metadata.namespace:
        involved["namespace"] = obj.metadata.namespace
    if obj.metadata.uid:
        involved["uid"] = obj.metadata.uid
    spec: dict[str, object] = {"involvedObject": involved, "type": type_, "reason": reason,
                               "message": message, "count": 1, "firstTimestamp": now,
                               "lastTimestamp": now}
    if source:
        spec["source"] = source
    event = resource.new(info.kind, name, namespace, spec)
    return await store.create(info, event, lease=lease)


async def _bump(store: client.Store, info: kinds.KindInfo, event: resource.Resource,
                lease: int) -> resource.Resource | None:
    """Count one more occurrence with CAS; None if someone else wrote first (re-read)."""
    event.spec["count"] = int(event.spec.get("count", 1)) + 1
    event.spec["lastTimestamp"] = resource.now_rfc3339()
    # Store.update would drop the key's lease (a put without one detaches it), so this
    # is the one write done by hand: same CAS, plus the lease (retried as every write is).
    key = store.key(info, event.name, event.namespace)
    ok, revision, _ = await store.txn(
        [etcd.cmp_mod(key, int(event.metadata.resourceVersion))],
        [etcd.op_put(key, codec.encode(event), lease)])
    if not ok:
        return None
    event.metadata.resourceVersion = str(revision)
    return event


async def list_events(store: client.Store, obj: resource.Resource) -> list[resource.Resource]:
    """Events about ``obj`` (this incarnation of it, when it has a uid), oldest first
    (by their last occurrence)."""
    events, _ = await store.list(event_kind(), namespace=_namespace(obj))
    out = []
    for event in events:
        involved = event.spec.get("involvedObject")
        if not isinstance(involved, dict):  # not an event about anything (hand-written)
            continue
        if involved.get("kind") != obj.kind or involved.get("name") != obj.name:
            continue
        if obj.metadata.uid and involved.get("uid") not in (None, obj.metadata.uid):
            continue
        out.append(event)
    # In etcd's order of their last occurrence (the revision that wrote it), not by
    # ``lastTimestamp``: that is the writer's wall clock, and a writer whose clock was
    # stepped would list its events hours out of place.
    out.sort(key=lambda e: (_revision(e), e.name))
    return out


def _revision(event: resource.Resource) -> int:
    try:
        return int(event.metadata.resourceVersion or 0)
    except ValueError:
        return 0
