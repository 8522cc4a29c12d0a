"""``swctl describe KIND NAME``: one object for people — metadata, spec, status,
conditions and the recent events about it.

Unlike ``get -o yaml`` this is not meant to be parsed: it pulls conditions out into a
table and adds the events the runtime recorded about the object (what a controller did
to it, or why it could not), which is usually the answer to "why is it not running?".
A Service's update lifecycle gets its own sections instead of raw status: the update
(state, started, completed, message) and its last revisions as ``rollout history``
lists them (each revision's full spec would bury everything else).
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from shoal.cli import common, console, errors, get, keyring, printers, redact, revisions
from shoal.crds import kinds, resource
from shoal.crds import updatemeta as um
from shoal.store import client
from shoal.store import errors as store_errors

LABEL_WIDTH = 20
MAX_EVENTS = 20
MAX_REVISIONS = 5  # the last ones; swctl rollout history lists them all


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("describe", parents=parents,
                       help="show one object in detail, with conditions and events")
    p.add_argument("kind", metavar="KIND", help="a kind, or TYPE/NAME (service/web)")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace (default: default)")
    p.add_argument("--show-values", action="store_true", help=redact.SHOW_VALUES_HELP)
    p.set_defaults(func=run, error_code=1)


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    args.kind, given = common.split_refs(args.kind, [args.name] if args.name else [])
    if len(given) != 1:
        raise errors.CliError(f"describe shows one object: swctl describe {args.kind} NAME "
                              "(or TYPE/NAME)")
    args.name = given[0]
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = registry.lookup(args.kind)
        namespace = common.namespace_for(info, args.namespace)
        try:
            obj = await store.get(info, args.name, namespace)
        except store_errors.NotFoundError:
            raise get.not_found(info, args.name, namespace) from None
        events = await recent_events(store, obj)
    console.out(render(info, redact.for_output([obj], args.show_values,
                                                keyring.Source.of(opts))[0], events))
    return 0


async def recent_events(store: client.Store, obj: resource.Resource) -> list[dict[str, Any]]:
    """The last MAX_EVENTS events the runtime recorded about ``obj``, oldest first."""
    # Imported here: the runtime package is heavy and only describe needs it.
    from shoal.runtime import status

    found = await status.list_events(store, obj)
    return [event.to_dict() for event in found[-MAX_EVENTS:]]


def _line(label: str, value: str, indent: int = 0) -> str:
    pad = " " * indent
    return f"{pad}{label + ':':<{LABEL_WIDTH - indent}}{value}".rstrip()


def _mapping(values: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(values.items())) or printers.NONE


def _block(title: str, data: Any) -> list[str]:
    if not data:
        return [_line(title, printers.NONE)]
    body = printers.to_yaml(data)
    return [f"{title}:", *("  " + line for line in body.splitlines())]


def render(info: kinds.KindInfo, obj: resource.Resource, events: list[dict[str, Any]],
           now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.UTC)
    meta = obj.metadata
    lines = [_line("Name", meta.name)]
    if info.namespaced:
        lines.append(_line("Namespace", meta.namespace or resource.DEFAULT_NAMESPACE))
    lines += [
        _line("Kind", f"{obj.kind} ({obj.apiVersion})"),
        _line("Labels", _mapping(meta.labels)),
        _line("Annotations", _mapping(meta.annotations)),
        _line("UID", meta.uid or printers.NONE),
        _line("Resource Version", meta.resourceVersion or printers.NONE),
        _line("Generation", str(meta.generation)),
        _line("Created", f"{meta.creationTimestamp} "
                         f"({printers.age(meta.creationTimestamp, now)} ago)"
              if meta.creationTimestamp else printers.NONE),
    ]
    if meta.finalizers:
        lines.append(_line("Finalizers", ", ".join(meta.finalizers)))
    if meta.deletionTimestamp:
        lines.append(_line("Deletion Requested", f"{meta.deletionTimestamp} (waiting for "
                                                 f"finalizers: {', '.join(meta.finalizers)})"))
    if meta.ownerReferences:
        owners = ", ".join(f"{o.get('kind', '?')}/{o.get('name', '?')}"
                           if isinstance(o, dict) else str(o)
                           for o in _entries(meta.ownerReferences))
        lines.append(_line("Owned By", owners))
    lines += _block("Spec", obj.spec)
    shown_apart = ("conditions", "update", "revisions") if obj.kind == "Service" \
        else ("conditions",)
    status = {k: v for k, v in obj.status.items() if k not in shown_apart}
    lines += _block("Status", status)
    if obj.kind == "Service":
        lines += _update(obj, now)
    lines += _conditions(_entries(obj.status.get("conditions")), now)
    lines += _events(events, now)
    return "\n".join(lines)


def _update(service: resource.Resource, now: datetime.datetime) -> list[str]:
    status = um.update_status(service)
    if not status:
        lines = [_line("Update", printers.NONE)]
    else:
        lines = ["Update:", _line("State", str(status.get("state") or printers.NONE), 2)]
        for label, key in (("Started", "startedAt"), ("Completed", "completedAt")):
            if status.get(key):
                lines.append(_line(label, f"{status[key]} "
                                          f"({printers.age(str(status[key]), now)} ago)", 2))
        if status.get("updatedTasks") is not None:
            lines.append(_line("Tasks", f"{status.get('updatedTasks')} of "
                                        f"{status.get('totalTasks', '?')} updated", 2))
        if status.get("message"):
            lines.append(_line("Message", str(status["message"]), 2))
    rows = revisions.history_rows(service, now)
    if not rows:
        return [*lines, _line("Revisions", printers.NONE)]
    shown = rows[-MAX_REVISIONS:]
    more = (f" (last {len(shown)} of {len(rows)}; swctl rollout history service/"
            f"{service.name})" if len(shown) < len(rows) else "")
    table, _ = printers.render_table(revisions.HISTORY_HEADERS, shown, indent=2)
    return [*lines, f"Revisions:{more}", table]


def _entries(value: Any) -> list[Any]:
    """A list field as stored; describe shows a hand-written object too, whatever it
    holds there (its Valid condition says what is wrong with it)."""
    return value if isinstance(value, list) else []


def _conditions(conditions: list[Any], now: datetime.datetime) -> list[str]:
    if not conditions:
        return [_line("Conditions", printers.NONE)]
    rows = [[str(c.get("type", "")), str(c.get("status", "")),
             str(c.get("reason") or printers.NONE),
             printers.age(c.get("lastTransitionTime"), now),
             str(c.get("message") or "")] if isinstance(c, dict)
            else ["?", "?", printers.NONE, "", f"not a condition: {c!r}"[:200]]
            for c in conditions]
    table, _ = printers.render_table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows,
                                     indent=2)
    return ["Conditions:", table]


def _event_time(event: dict[str, Any]) -> str | None:
    for field in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = event.get(field) or (event.get("spec") or {}).get(field)
        if value:
            return str(value)
    stamp = (event.get("metadata") or {}).get("creationTimestamp")
    return str(stamp) if stamp else None


def _event_field(event: dict[str, Any], *names: str) -> str:
    # Shoal keeps an Event's fields in spec; Kubernetes keeps them at the top level.
    for name in names:
        for holder in (event, event.get("spec") or {}):
            value = holder.get(name)
            if value:
                if isinstance(value, dict):  # source: {component: ...}
                    value = value.get("component") or value.get("host") or ""
                return str(value)
    return ""


def _events(events: list[dict[str, Any]], now: datetime.datetime) -> list[str]:
    if not events:
        return [_line("Events", printers.NONE)]
    rows = []
    for ev in events:
        count = _event_field(ev, "count")
        when = printers.age(_event_time(ev), now)
        if count and count not in ("0", "1"):
            when += f" (x{count})"
        rows.append([_event_field(ev, "type") or "Normal", _event_field(ev, "reason"), when,
                     _event_field(ev, "reportingController", "source", "reportingComponent"),
                     _event_field(ev, "message", "note")])
    table, _ = printers.render_table(["TYPE", "REASON", "AGE", "FROM", "MESSAGE"], rows,
                                     indent=2)
    return ["Events:", table]
