"""Cluster objects as the small JSON records the page draws: one function per kind.

A record holds only what the page shows, already in swctl's words: a task's error is
``taskview.error_cell`` (what ``service ps`` prints), a service's ports are
``service.ports_cell`` (``service ls``), replicas count the way ``taskview.replica_share``
counts them. So the page and the command line never disagree, and the browser receives
a few hundred bytes per object instead of the stored object with its spec and history.

Every record has ``k``, its key in the page (``namespace/name``, or the name for
cluster-scoped kinds). Functions are pure and must not raise on a malformed object (a
bad object in etcd is shown as best it can be, never a dead stream): fields that cannot
be read come out empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from shoal.cli import printers, taskview
from shoal.cli import service as service_verbs
from shoal.crds import networking as nw
from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.crds import updatemeta as um

View = dict[str, Any]

#: The kinds the page shows, by plural (the informers' KindInfo.plural).
NODES: Final = "nodes"
SERVICES: Final = "services"
TASKS: Final = "tasks"
NETWORKS: Final = "networks"
EVENTS: Final = "events"
KINDS: Final = (NODES, SERVICES, TASKS, NETWORKS, EVENTS)


def key_of(obj: resource.Resource) -> str:
    ns = obj.metadata.namespace
    return f"{ns}/{obj.metadata.name}" if ns else obj.metadata.name


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def node_view(node: resource.Resource) -> View:
    status = _dict(node.status)
    labels = node.metadata.labels if isinstance(node.metadata.labels, dict) else {}
    return {
        "k": key_of(node), "name": node.metadata.name,
        "role": _str(node.spec.get("role") or "worker"),
        "availability": _str(node.spec.get("availability") or "active"),
        "state": _str(status.get("state") or "unknown"),
        "message": _str(status.get("message")),
        "address": _str(status.get("address")),
        "dataplane": _str(status.get("dataplane")),
        "hostname": _str(status.get("hostname")),
        "labels": {str(k): _str(v) for k, v in labels.items()},
    }


def _networks(service: resource.Resource) -> list[str]:
    found = service.spec.get("networks")
    out = []
    for item in found if isinstance(found, list) else []:
        name = item.get("name") if isinstance(item, dict) else item
        if name:
            out.append(str(name))
    return out


def service_view(service: resource.Resource) -> View:
    template = _dict(service.spec.get("template"))
    update = um.update_status(service)
    try:
        ports = service_verbs.ports_cell(service)
        vips = {name: str(addr) for name, addr in nw.endpoint(service).vips.items()}
    except Exception:  # a malformed endpoint: show the service without its ports
        ports, vips = "", {}
    return {
        "k": key_of(service), "ns": ts.namespace_of(service), "name": service.metadata.name,
        "mode": taskview.mode_of(service), "replicas": taskview.replicas_of(service),
        "image": _str(template.get("image")), "ports": ports, "networks": _networks(service),
        "vips": vips,  # network -> the service's virtual IP on it
        "revision": um.current_revision(service),
        "paused": service.spec.get("paused") is True,
        "rollout": _str(update.get("state")), "rolloutMessage": _str(update.get("message")),
        "problem": taskview.failed_conditions(service),
    }


def task_view(task: resource.Resource) -> View:
    service = ts.service_name(task)
    mode = taskview.GLOBAL if not ts.slot_of(task) else taskview.REPLICATED
    slot = taskview.slot_key(task, mode)
    return {
        "k": key_of(task), "ns": ts.namespace_of(task), "name": task.metadata.name,
        "service": _str(service), "slot": slot,
        "label": taskview.slot_label(service or task.metadata.name, slot),
        "node": _str(ts.node_name_of(task)),
        "state": ts.shown_state(task), "desired": ts.desired_state(task),
        # What REPLICAS and the node columns count (taskview.replica_share, tasks_per_node).
        "active": ts.is_active_desired(task), "running": ts.is_running(task),
        "ended": ts.has_ended(task),
        "error": taskview.error_cell(task),
        "since": ts.status_time(task) or ts.creation_time(task),
        "image": _str(_dict(task.spec.get("template")).get("image")),
        "uid": _str(task.metadata.uid),
    }


def network_view(network: resource.Resource) -> View:
    status, spec = _dict(network.status), network.spec
    return {
        "k": key_of(network), "ns": _str(network.metadata.namespace),
        "name": network.metadata.name, "driver": _str(spec.get("driver") or "overlay"),
        "subnet": _str(status.get("subnet") or spec.get("subnet")),
        "vni": _str(status.get("vni")),
        "problem": taskview.failed_conditions(network),
    }


def event_view(event: resource.Resource) -> View:
    spec = event.spec
    involved = _dict(spec.get("involvedObject"))
    return {
        "k": key_of(event), "type": _str(spec.get("type") or "Normal"),
        "reason": _str(spec.get("reason")), "message": _str(spec.get("message")),
        "object": f"{_str(involved.get('kind')).lower()}/{_str(involved.get('name'))}",
        "ns": _str(involved.get("namespace")),
        "count": spec.get("count") if isinstance(spec.get("count"), int) else 1,
        "last": _str(spec.get("lastTimestamp") or spec.get("firstTimestamp")
                     or event.metadata.creationTimestamp),
    }


VIEWS: Final[dict[str, Callable[[resource.Resource], View]]] = {
    NODES: node_view, SERVICES: service_view, TASKS: task_view, NETWORKS: network_view,
    EVENTS: event_view,
}


def view_of(kind: str, obj: resource.Resource) -> View:
    """The record of ``obj`` of a built-in page kind (see :func:`safely`)."""
    return safely(VIEWS[kind], obj)


def safely(view: Callable[[resource.Resource], View], obj: resource.Resource) -> View:
    """``view(obj)``; a record with ``bad`` set when the object cannot be read."""
    try:
        return view(obj)
    except Exception as exc:
        return {"k": key_of(obj), "name": obj.metadata.name, "bad": f"{type(exc).__name__}: "
                f"{exc}"}


def custom_view(printer: printers.TablePrinter) -> Callable[[resource.Resource], View]:
    """Records of a custom kind: the cells ``swctl get KIND -A`` prints for each object
    (the CRD's printer columns), in the order of ``printer.headers``."""
    def view(obj: resource.Resource) -> View:
        return {"k": key_of(obj), "cells": printer.row(obj)}
    return view
