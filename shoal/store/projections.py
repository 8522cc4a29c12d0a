"""Projections: reduced copies of Tasks and Services under keys one node may be allowed to read.

etcd's RBAC grants key *ranges*, not fields or "objects assigned to me". For a worker's
credentials to read only what its own tasks need, what it needs must live under keys
that a range can name. The store therefore writes, in the same transaction as the source
object, these copies (``<p>`` is the store's prefix):

* ``<p>/nodes/<node>/tasks/<ns>/<name>``: a Task assigned to ``<node>``, with its
  metadata and spec (desired state included) and no status. The node's agent reads its
  tasks here, and nothing else of the registry's Tasks.
* ``<p>/dataplane/tasks/<ns>/<name>``: of a Task that is assigned and attached to
  networks, only what a node's dataplane (overlay peers, balancer backends, DNS) needs:
  name, uid, service, node, network attachments, desired state, and whether it is
  running or has ended. No environment, no command, no secret or config references.
* ``<p>/dataplane/services/<ns>/<name>``: of every Service, its networks and endpoint
  (mode, ports, VIPs) and nothing of its task template.

Because a projection is written (or deleted) in the very transaction that writes its
source, the two never disagree and no crash can leave one behind: there is no extra
controller and no window between them.

A projection is rewritten only when what it holds changes, so the hot path (agents
writing task status) costs nothing extra: the store remembers, for each object it reads,
a :class:`Memo` of what its projections depended on (spec digest, node, the status bits
projected), and compares the object it is asked to write against it. An object whose
provenance is unknown (built by hand, not read from the store) gets its projections
written unconditionally; a redundant put is harmless, a missed one is not.

This module is pure: keys and values from objects, no etcd.
"""

from __future__ import annotations

import typing
from collections.abc import Hashable, Mapping
from typing import Any

import orjson

from shoal.crds import resource
from shoal.crds import taskstates as ts

NODES_DIR = "nodes"
REPORTS_DIR = "reports"
DATAPLANE_DIR = "dataplane"
TASK_KIND = "Task"
SERVICE_KIND = "Service"
# What a rewrite decision needs to know about the status: the dataplane task projection
# carries the state only from ``running`` on (earlier states all mean "not serving yet").
_PROJECTED_STATES = frozenset(ts.STATES[ts.RUNNING_RANK:])
_TASK_LABELS = (ts.SERVICE_LABEL,)  # the only labels a dataplane reads (the service)
_ENCODE = orjson.OPT_NON_STR_KEYS


class Memo(typing.NamedTuple):
    """What an object's projections depended on when it was stored."""

    spec_digest: int
    node: str | None  # spec.nodeName, if a usable one
    status: Hashable  # the projected part of the status (see ``status_memo``)


def node_prefix(prefix: str, node: str) -> bytes:
    """Every key of one node: its task projections, status, secrets and configs."""
    return f"{prefix.rstrip('/')}/{NODES_DIR}/{node}/".encode()


def node_tasks_prefix(prefix: str, node: str) -> bytes:
    return node_prefix(prefix, node) + b"tasks/"


def node_task_key(prefix: str, node: str, namespace: str, name: str) -> bytes:
    return node_tasks_prefix(prefix, node) + f"{namespace}/{name}".encode()


def reports_prefix(prefix: str) -> bytes:
    """Every node's task reports: what the fold controller watches. A tree of its own,
    not under ``nodes/``, so that the fold reads no task copies and the agents, watching
    ``nodes/``, get no echo of their own report writes."""
    return f"{prefix.rstrip('/')}/{REPORTS_DIR}/".encode()


def node_reports_prefix(prefix: str, node: str) -> bytes:
    return reports_prefix(prefix) + f"{node}/".encode()


def report_key(prefix: str, node: str, namespace: str, name: str) -> bytes:
    """Where ``node``'s agent reports the status of one of its tasks (the fold controller
    copies it into the Task)."""
    return node_reports_prefix(prefix, node) + f"{namespace}/{name}".encode()


NODE_REPORT = "status"


def node_report_key(prefix: str, node: str) -> bytes:
    """Where ``node``'s agent reports its Node's status (the fold controller copies it
    into the Node): ``<p>/reports/<node>/status``, two segments where a task's report has
    three, so the two never collide."""
    return node_reports_prefix(prefix, node) + NODE_REPORT.encode()


def parse_node_report_key(reports: bytes, key: bytes) -> str | None:
    """The node of a node report key, None for any other shape."""
    parts = key[len(reports):].decode(errors="replace").split("/")
    if len(parts) != 2 or not parts[0] or parts[1] != NODE_REPORT:
        return None
    return parts[0]


def encode_node_report(report: dict[str, Any]) -> bytes:
    """A node report: {role, labels, status} as its agent sees them."""
    return orjson.dumps(report, option=_ENCODE)


def decode_node_report(value: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("status"), dict) or \
            not isinstance(data.get("labels", {}), dict):
        return None
    return data


class ReportKey(typing.NamedTuple):
    node: str
    namespace: str
    name: str


def parse_report_key(reports: bytes, key: bytes) -> ReportKey | None:
    """A key under ``reports/`` taken apart, None for any other shape."""
    parts = key[len(reports):].decode(errors="replace").split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return ReportKey(*parts)


def nodes_prefix(prefix: str) -> bytes:
    """Every node's keys: what a fold controller, or an agent serving many hollow nodes,
    watches."""
    return f"{prefix.rstrip('/')}/{NODES_DIR}/".encode()


class NodeKey(typing.NamedTuple):
    """A key under ``nodes/`` taken apart: ``<node>/<section>/<namespace>/<name>``."""

    node: str
    section: str  # "tasks", "secrets", "configs"
    namespace: str
    name: str


def parse_node_key(nodes: bytes, key: bytes) -> NodeKey | None:
    """``key`` (under the ``nodes`` prefix) as a NodeKey, None for any other shape
    (``<node>/status``, a hand-written key)."""
    parts = key[len(nodes):].decode(errors="replace").split("/")
    if len(parts) != 4 or not all(parts):
        return None
    return NodeKey(*parts)


def encode_report(uid: str, status: dict[str, Any]) -> bytes:
    """A task report: the uid it is about (a namesake's report is not its) and its status."""
    return orjson.dumps({"uid": uid, "status": status}, option=_ENCODE)


def decode_report(value: bytes) -> tuple[str, dict[str, Any]] | None:
    """(uid, status) of a report, or None if it is not one (logged by the caller)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    uid, status = data.get("uid"), data.get("status")
    if not isinstance(uid, str) or not isinstance(status, dict):
        return None
    return uid, status


def dataplane_prefix(prefix: str) -> bytes:
    return f"{prefix.rstrip('/')}/{DATAPLANE_DIR}/".encode()


def dataplane_key(prefix: str, plural: str, namespace: str, name: str) -> bytes:
    return dataplane_prefix(prefix) + f"{plural}/{namespace}/{name}".encode()


def usable_node(value: Any) -> str | None:
    """``spec.nodeName`` as a key segment, or None: a value that cannot name a node's keys
    (empty, not a string, holding ``/``) projects nowhere, as no agent could be that node."""
    if isinstance(value, str) and value and "/" not in value and value not in (".", ".."):
        return value
    return None


def status_memo(kind: Any, status: Any) -> Hashable:
    """The part of ``status`` some projection of ``kind`` holds (None for other kinds)."""
    if not isinstance(status, Mapping):
        return None
    if kind == TASK_KIND:
        state = status.get("state")
        return state if state in _PROJECTED_STATES else None
    if kind == SERVICE_KIND:
        endpoint = status.get("endpoint")
        return orjson.dumps(endpoint, option=_ENCODE) if endpoint is not None else None
    return None


def memo_of(obj: resource.Resource, spec_digest: int) -> Memo:
    """The memo of ``obj`` as stored. A Task's status counts only when it has a dataplane
    copy (assigned, on networks): the copy for its node holds no status, so the status
    writes of every other task -- all of them, at scale -- rewrite nothing."""
    node = usable_node(obj.spec.get("nodeName"))
    if obj.kind == TASK_KIND and (node is None or not obj.spec.get("networks")):
        return Memo(spec_digest, node, None)
    return Memo(spec_digest, node, status_memo(obj.kind, obj.status))


def _namespace(obj: resource.Resource) -> str:
    return obj.metadata.namespace or resource.DEFAULT_NAMESPACE


def _envelope(obj: resource.Resource, metadata: dict[str, Any], spec: dict[str, Any],
              status: dict[str, Any]) -> bytes:
    return orjson.dumps({"apiVersion": obj.apiVersion, "kind": obj.kind,
                         "metadata": metadata, "spec": spec, "status": status},
                        option=_ENCODE)


def _node_task(obj: resource.Resource) -> bytes:
    meta = obj.metadata.to_dict(deep=False)
    meta.pop("resourceVersion", None)
    return _envelope(obj, meta, obj.spec, {})


def _dataplane_task(obj: resource.Resource, node: str) -> bytes:
    labels = {k: v for k in _TASK_LABELS if (v := obj.metadata.labels.get(k)) is not None}
    spec = {"nodeName": node, "networks": obj.spec.get("networks")}
    for field in ("desiredState", "serviceName", "slot"):
        if field in obj.spec:
            spec[field] = obj.spec[field]
    state = status_memo(TASK_KIND, obj.status)
    return _envelope(obj, {"name": obj.name, "namespace": _namespace(obj),
                           "uid": obj.metadata.uid, "labels": labels},
                     spec, {"state": state} if state else {})


def _dataplane_service(obj: resource.Resource) -> bytes:
    spec: dict[str, Any] = {k: obj.spec[k] for k in ("networks", "endpoint") if k in obj.spec}
    status = {"endpoint": obj.status["endpoint"]} if "endpoint" in obj.status else {}
    return _envelope(obj, {"name": obj.name, "namespace": _namespace(obj),
                           "uid": obj.metadata.uid}, spec, status)


def projected(prefix: str, obj: resource.Resource) -> dict[bytes, bytes]:
    """Every projection of ``obj`` (as it is about to be stored): key -> value."""
    if obj.kind == TASK_KIND:
        node = usable_node(obj.spec.get("nodeName"))
        if node is None:
            return {}
        ns = _namespace(obj)
        out = {node_task_key(prefix, node, ns, obj.name): _node_task(obj)}
        if obj.spec.get("networks"):
            out[dataplane_key(prefix, "tasks", ns, obj.name)] = _dataplane_task(obj, node)
        return out
    if obj.kind == SERVICE_KIND:
        return {dataplane_key(prefix, "services", _namespace(obj), obj.name):
                _dataplane_service(obj)}
    return {}


def possible_keys(prefix: str, kind: str, namespace: str, name: str,
                  node: str | None) -> list[bytes]:
    """Every key a projection of this object may be stored under, given the node it was
    assigned to: what a delete removes (deleting an absent key is harmless)."""
    if kind == TASK_KIND:
        keys = [dataplane_key(prefix, "tasks", namespace, name)]
        if node is not None:
            keys.insert(0, node_task_key(prefix, node, namespace, name))
        return keys
    if kind == SERVICE_KIND:
        return [dataplane_key(prefix, "services", namespace, name)]
    return []


def projects(kind: str) -> bool:
    return kind in (TASK_KIND, SERVICE_KIND)


def changes(prefix: str, old: Memo | None, new: resource.Resource,
            new_memo: Memo) -> tuple[dict[bytes, bytes], list[bytes]]:
    """What writing ``new`` over an object stored with ``old`` does to the projections:
    (keys to put -> values, keys to delete). ``old`` None: provenance unknown, so every
    projection is put (nothing can be known to be stale)."""
    if not projects(new.kind):
        return {}, []
    if old is not None and old == new_memo:
        return {}, []  # nothing any projection holds has changed
    puts = projected(prefix, new)
    if old is None:
        return puts, []
    if old.spec_digest == new_memo.spec_digest and old.node == new_memo.node:
        # Only the projected status moved: only the dataplane copy holds it.
        dp = dataplane_prefix(prefix)
        return {k: v for k, v in puts.items() if k.startswith(dp)}, []
    stale = [k for k in possible_keys(prefix, new.kind, _namespace(new), new.name, old.node)
             if k not in puts]
    return puts, stale


def deleted(prefix: str, obj: resource.Resource, old: Memo | None) -> list[bytes]:
    """Keys to delete with the source object ``obj`` (as last read)."""
    if not projects(obj.kind):
        return []
    nodes = {usable_node(obj.spec.get("nodeName"))}
    if old is not None:
        nodes.add(old.node)
    keys: list[bytes] = []
    for node in sorted(nodes, key=lambda n: n or ""):
        for key in possible_keys(prefix, obj.kind, _namespace(obj), obj.name, node):
            if key not in keys:
                keys.append(key)
    return keys
