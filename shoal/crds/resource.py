"""The Kubernetes-style resource envelope every Shoal object travels in.

Objects are kept as a small dataclass envelope around plain ``dict`` spec and status:
built-in and user-defined kinds share one representation, JSON round-trips are cheap
(the informer ingests tens of thousands per second), and typed views of a kind's spec
live next to the kind that needs them rather than in a parallel class hierarchy.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import time
from typing import Any

API_VERSION = "shoal.io/v1"
DEFAULT_NAMESPACE = "default"


_last_stamp: tuple[int, str] = (0, "")


def now_rfc3339() -> str:
    """The current UTC time the way Kubernetes writes timestamps (second resolution).

    Cached per second: bulk writes stamp thousands of objects a second and strftime
    would be a measurable share of the cost.
    """
    global _last_stamp
    second = int(time.time())
    if _last_stamp[0] != second:
        stamp = datetime.datetime.fromtimestamp(second, datetime.UTC)
        _last_stamp = (second, stamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _last_stamp[1]


@dataclasses.dataclass
class ObjectMeta:
    """``metadata`` of a resource; field names follow Kubernetes so manifests carry over."""

    name: str
    namespace: str | None = None
    uid: str = ""
    generation: int = 0
    resourceVersion: str = ""  # etcd mod_revision as a string, as kubectl shows it
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    finalizers: list[str] = dataclasses.field(default_factory=list)
    ownerReferences: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None

    def to_dict(self, deep: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        for field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            value = getattr(self, field)
            if value:
                out[field] = value
        if self.generation:
            out["generation"] = self.generation
        for field in ("labels", "annotations", "finalizers", "ownerReferences"):
            value = getattr(self, field)
            if value:
                out[field] = copy.deepcopy(value) if deep else value
        return out

    def copy(self) -> ObjectMeta:
        """An independent copy (the collections are copied, their string items shared).

        Spelled out rather than ``dataclasses.replace``, which introspects the fields on
        every call: the store copies an envelope per write.
        """
        return ObjectMeta(
            self.name, self.namespace, self.uid, self.generation, self.resourceVersion,
            dict(self.labels), dict(self.annotations), list(self.finalizers),
            [dict(r) for r in self.ownerReferences], self.creationTimestamp,
            self.deletionTimestamp)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectMeta:
        return cls(
            name=str(data.get("name", "")),
            namespace=data.get("namespace"),
            uid=str(data.get("uid", "") or ""),
            generation=int(data.get("generation", 0) or 0),
            resourceVersion=str(data.get("resourceVersion", "") or ""),
            labels=dict(data.get("labels") or {}),
            annotations=dict(data.get("annotations") or {}),
            finalizers=list(data.get("finalizers") or []),
            ownerReferences=[dict(r) for r in data.get("ownerReferences") or []],
            creationTimestamp=data.get("creationTimestamp"),
            deletionTimestamp=data.get("deletionTimestamp"),
        )


@dataclasses.dataclass
class Resource:
    """One object: envelope plus free-form ``spec`` and ``status`` mappings."""

    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    apiVersion: str = API_VERSION

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def ref(self) -> str:
        """``kind/name`` or ``kind/namespace/name``: the resource key put on every log line."""
        if self.metadata.namespace:
            return f"{self.kind.lower()}/{self.metadata.namespace}/{self.metadata.name}"
        return f"{self.kind.lower()}/{self.metadata.name}"

    def to_dict(self, deep: bool = True) -> dict[str, Any]:
        """The manifest form. ``deep=False`` shares spec/status with this object: only for
        callers that serialise it at once and never mutate it (the store's encoder)."""
        out: dict[str, Any] = {
            "apiVersion": self.apiVersion,
            "kind": self.kind,
            "metadata": self.metadata.to_dict(deep),
        }
        if self.spec:
            out["spec"] = copy.deepcopy(self.spec) if deep else self.spec
        if self.status:
            out["status"] = copy.deepcopy(self.status) if deep else self.status
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resource:
        """Build from a decoded manifest or etcd value. Shape is not validated here."""
        return cls(
            apiVersion=str(data.get("apiVersion", API_VERSION)),
            kind=str(data.get("kind", "")),
            metadata=ObjectMeta.from_dict(dict(data.get("metadata") or {})),
            spec=dict(data.get("spec") or {}),
            status=dict(data.get("status") or {}),
        )

    @classmethod
    def from_fresh_dict(cls, data: dict[str, Any]) -> Resource:
        """``from_dict`` for a mapping nobody else holds (one just decoded from JSON): its
        collections are taken over instead of copied, which halves the cost of decoding
        the events an informer ingests. Anything of an unexpected type goes the careful way.
        """
        meta = data.get("metadata") or {}
        spec = data.get("spec") or {}
        status = data.get("status") or {}
        if type(meta) is not dict or type(spec) is not dict or type(status) is not dict:
            return cls.from_dict(data)
        get = meta.get
        labels, annotations = get("labels") or {}, get("annotations") or {}
        finalizers, owners = get("finalizers") or [], get("ownerReferences") or []
        name, uid, generation = get("name", ""), get("uid") or "", get("generation") or 0
        if (type(labels) is not dict or type(annotations) is not dict
                or type(finalizers) is not list or type(owners) is not list
                or type(name) is not str or type(uid) is not str or type(generation) is not int):
            return cls.from_dict(data)
        return cls(
            str(data.get("kind", "")),
            ObjectMeta(name, get("namespace"), uid, generation,
                       str(get("resourceVersion") or ""), labels, annotations, finalizers,
                       owners, get("creationTimestamp"), get("deletionTimestamp")),
            spec, status, str(data.get("apiVersion", API_VERSION)))

    def deepcopy(self) -> Resource:
        return copy.deepcopy(self)


def new(kind: str, name: str, namespace: str | None = None, spec: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None) -> Resource:
    """Convenience constructor for code that builds objects (controllers, tests)."""
    return Resource(kind=kind, metadata=ObjectMeta(name=name, namespace=namespace,
                                                   labels=dict(labels or {})),
                    spec=dict(spec or {}))


def owner_reference(owner: Resource, controller: bool = True) -> dict[str, Any]:
    """An ownerReferences entry pointing at ``owner`` (the gc controller follows these)."""
    return {"apiVersion": owner.apiVersion, "kind": owner.kind, "name": owner.name,
            "uid": owner.metadata.uid, "controller": controller}
