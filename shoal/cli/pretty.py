"""Human renderings of one object, as ``docker node inspect --pretty`` and ``docker
network inspect`` give them: ``swctl node inspect --pretty`` and ``swctl network inspect``.

The stored form (``-o yaml``/``json``) holds bytes, float CPUs and RFC 3339 stamps and
nothing about the tasks on a node or a network; people asking "what is on this node,
what sits on this network" want memory in GiB/MiB, dates with their age, and the tasks
attached with their addresses. These functions only format: the callers (node.py,
network.py) read the store, so this module is pure and unit-tested without etcd.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from shoal.cli import printers
from shoal.crds import networking as nw
from shoal.crds import resource, units
from shoal.crds import taskstates as ts
from shoal.crds import updatemeta as um

_BINARY_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
_LABEL_WIDTH = 24  # docker's --pretty aligns values in one column


def human_bytes(size: Any) -> str:
    """``8589934592`` -> ``8GiB``, ``8200000000`` -> ``7.637GiB`` (docker's units.BytesSize
    shape: at most four significant digits, binary units)."""
    try:
        value = float(size)
    except (TypeError, ValueError):
        return str(size) if size not in (None, "") else printers.NONE
    for unit, scale in _BINARY_UNITS:
        if value >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:.4g}B"


def human_cpus(cpus: Any) -> str:
    try:
        value = float(cpus)
    except (TypeError, ValueError):
        return printers.NONE
    return str(int(value)) if value == int(value) else f"{value:g}"


def human_date(stamp: Any, now: datetime.datetime | None = None) -> str:
    """``2024-05-01 12:00:03 +0000 UTC (3m20s ago)``; the raw text if it is no date."""
    when = printers.parse_time(str(stamp)) if stamp else None
    if when is None:
        return str(stamp) if stamp else printers.NONE
    return (f"{when.strftime('%Y-%m-%d %H:%M:%S +0000 UTC')} "
            f"({printers.age(str(stamp), now)} ago)")


def _line(label: str, value: Any, indent: int = 0) -> str:
    head = " " * indent + f"{label}:"
    return f"{head:<{_LABEL_WIDTH}}{value}"


def _labels(labels: dict[str, Any], indent: int = 1) -> list[str]:
    return [" " * indent + f"- {k}={v}" for k, v in sorted(labels.items())]


def task_addresses(task: resource.Resource) -> dict[str, str]:
    """network -> the task's address on it (``10.0.1.5/24``)."""
    return {a.network: str(a.address) for a in nw.task_attachments(task) or ()}


def node_text(node: resource.Resource, tasks: Sequence[resource.Resource], *,
              local: bool = False, now: datetime.datetime | None = None) -> str:
    """``node inspect --pretty``: identity, status, platform, resources in human units,
    labels, and the tasks on the node that have not ended."""
    status, spec = node.status, node.spec
    platform = status.get("platform") or {}
    res = status.get("resources") or {}
    lines = [
        _line("ID", node.metadata.uid or printers.NONE),
        _line("Name", node.name + (" (this host)" if local else "")),
        _line("Hostname", status.get("hostname") or printers.NONE),
        _line("Joined at", human_date(node.metadata.creationTimestamp, now)),
        "Status:",
        _line("State", str(status.get("state") or "unknown").capitalize(), 1),
    ]
    if status.get("message"):
        lines.append(_line("Message", status["message"], 1))
    lines += [
        _line("Availability", str(spec.get("availability") or "active").capitalize(), 1),
        _line("Address", status.get("address") or printers.NONE, 1),
        _line("Role", str(spec.get("role") or "worker"), 0),
        "Platform:",
        _line("Operating System", platform.get("os") or printers.NONE, 1),
        _line("Architecture", platform.get("architecture") or printers.NONE, 1),
        "Resources:",
        _line("CPUs", human_cpus(res.get("cpus")), 1),
        _line("Memory", human_bytes(res.get("memory")), 1),
        _line("Runtime", status.get("runtime") or printers.NONE),
        _line("Agent Version", status.get("agentVersion") or printers.NONE),
    ]
    if status.get("dataplane"):
        lines.append(_line("Dataplane", status["dataplane"]))
    labels = dict(node.metadata.labels)
    lines.append("Labels:" if labels else _line("Labels", printers.NONE))
    lines += _labels(labels)
    engine = dict(status.get("engineLabels") or {})
    if engine:
        lines.append("Engine Labels:")
        lines += _labels(engine)
    live = sorted((t for t in tasks if ts.node_name_of(t) == node.name and not ts.has_ended(t)),
                  key=ts.task_key)
    lines.append(f"Tasks: {len(live)}" if live else _line("Tasks", "none"))
    if live:
        rows = [[ts.task_key(t), ts.service_name(t) or printers.NONE,
                 ts.shown_state(t), ",".join(f"{n}={a}" for n, a in
                                                sorted(task_addresses(t).items())) or "-"]
                for t in live]
        table, _ = printers.render_table(["TASK", "SERVICE", "STATE", "ADDRESSES"], rows,
                                         indent=1)
        lines.append(table)
    return "\n".join(lines)


def network_text(network: resource.Resource, services: Sequence[resource.Resource],
                 tasks: Sequence[resource.Resource],
                 now: datetime.datetime | None = None) -> str:
    """``network inspect``: driver, IPAM (allocated subnet, gateway, VNI) and labels,
    then the services that name the network (with their VIP on it) and every
    task attached to it that has not ended, with its node and address."""
    spec = network.spec
    info = nw.network_info(network)
    lines = [
        _line("Name", network.name),
        _line("ID", network.metadata.uid or printers.NONE),
        _line("Created", human_date(network.metadata.creationTimestamp, now)),
        _line("Driver", spec.get("driver") or "overlay"),
        _line("Scope", "swarm"),
        _line("Attachable", "true" if spec.get("attachable") is True else "false"),
        _line("Internal", "true" if spec.get("internal") is True else "false"),
        _line("Ingress", "true" if nw.is_ingress(network) else "false"),
        "IPAM:",
        _line("Subnet", str(info.subnet) if info else str(spec.get("subnet") or "<pending>"),
              1),
        _line("Gateway", str(spec.get("gateway") or (info.gateway if info else "<pending>")),
              1),
        _line("VNI", str(info.vni) if info else "<pending>", 1),
    ]
    labels = dict(network.metadata.labels)
    lines.append("Labels:" if labels else _line("Labels", printers.NONE))
    lines += _labels(labels)
    users = sorted((s for s in services if network.name in nw.service_networks(s)),
                   key=lambda s: (s.namespace or "default", s.name))
    if users:
        lines.append(f"Services: {len(users)}")
        rows = []
        for svc in users:
            vip = nw.endpoint(svc).vips.get(network.name)
            rows.append([f"{svc.namespace or 'default'}/{svc.name}",
                         str(vip) if vip is not None else "-"])
        lines.append(printers.render_table(["SERVICE", "VIP"], rows, indent=1)[0])
    else:
        lines.append(_line("Services", "none"))
    attached = sorted(((t, task_addresses(t)[network.name]) for t in tasks
                       if not ts.has_ended(t) and network.name in task_addresses(t)),
                      key=lambda pair: ts.task_key(pair[0]))
    if attached:
        lines.append(f"Tasks: {len(attached)}")
        rows = [[ts.task_key(t), ts.node_name_of(t) or "unassigned", ts.shown_state(t),
                 address] for t, address in attached]
        lines.append(printers.render_table(["TASK", "NODE", "STATE", "ADDRESS"], rows,
                                           indent=1)[0])
    else:
        lines.append(_line("Tasks", "none"))
    return "\n".join(lines)


def _size(value: Any) -> str:
    try:
        return human_bytes(units.parse_size(value))
    except ValueError:
        return str(value)


def _config_lines(title: str, field: str, config: Any, order_label: str) -> list[str]:
    # Missing fields read as the schema's defaults (updatemeta.config_defaults), the one
    # place Swarm's values are written down.
    config = {**um.config_defaults(field), **(config if isinstance(config, dict) else {})}
    lines = [f"{title}:", _line("Parallelism", config.get("parallelism"), 1)]
    if config.get("delay") not in (None, 0, "0s"):
        lines.append(_line("Delay", config["delay"], 1))
    lines += [_line("On failure", config.get("failureAction"), 1),
              _line("Monitoring Period", config.get("monitor"), 1),
              _line("Max failure ratio", config.get("maxFailureRatio"), 1),
              _line(order_label, config.get("order"), 1)]
    return lines


def _ago(stamp: Any, now: datetime.datetime | None) -> str:
    """Docker's ``3 minutes ago`` shape, from the stored RFC 3339 stamp."""
    when = printers.parse_time(str(stamp)) if stamp else None
    return f"{printers.age(str(stamp), now)} ago" if when else str(stamp or printers.NONE)


def update_status_lines(service: resource.Resource,
                        now: datetime.datetime | None = None) -> list[str]:
    """Docker's ``UpdateStatus:`` block (State, Started, Completed, Message), from
    ``status.update``; nothing when no update has been reported."""
    status = um.update_status(service)
    if not status.get("state"):
        return []
    lines = ["UpdateStatus:", _line("State", status["state"], 1)]
    if status.get("startedAt"):
        lines.append(_line("Started", _ago(status["startedAt"], now), 1))
    if status.get("completedAt"):
        lines.append(_line("Completed", _ago(status["completedAt"], now), 1))
    if status.get("message"):
        lines.append(_line("Message", status["message"], 1))
    return lines


def service_text(service: resource.Resource,
                 now: datetime.datetime | None = None) -> str:
    """``service inspect --pretty``: the sections and labels of ``docker service inspect
    --pretty``, from the stored spec (the defaults admission filled in included)."""
    spec = service.spec
    template = spec.get("template") or {}
    lines = [_line("ID", service.metadata.uid or printers.NONE),
             _line("Name", service.name),
             _line("Namespace", service.namespace or resource.DEFAULT_NAMESPACE),
             _line("Created", human_date(service.metadata.creationTimestamp, now))]
    labels = dict(service.metadata.labels)
    lines.append("Labels:" if labels else _line("Labels", printers.NONE))
    lines += _labels(labels)
    if spec.get("mode") == "global":
        lines.append(_line("Service Mode", "Global"))
    else:
        lines += [_line("Service Mode", "Replicated"),
                  _line("Replicas", spec.get("replicas", 1), 1)]
    lines += update_status_lines(service, now)
    placement = spec.get("placement") or {}
    if placement:
        lines.append("Placement:")
        if placement.get("constraints"):
            lines.append(_line("Constraints", "[" + " ".join(placement["constraints"]) + "]",
                               1))
        if placement.get("preferences"):
            prefs = " ".join(f"spread={p.get('spread')}" for p in placement["preferences"])
            lines.append(_line("Preferences", f"[{prefs}]", 1))
        if placement.get("maxReplicasPerNode"):
            lines.append(_line("Max Replicas Per Node", placement["maxReplicasPerNode"], 1))
        rebalance = placement.get("rebalance")
        if isinstance(rebalance, dict) and rebalance.get("enabled") is True:
            # Shoal's own (Swarm never moves a running task): see docs/updater.md.
            lines.append(_line("Rebalance", f"maxSkew {rebalance.get('maxSkew', 1)}, "
                               f"{rebalance.get('maxMovesPerMinute', 6)} moves a minute", 1))
    lines += _config_lines("UpdateConfig", "updateConfig", spec.get("updateConfig"),
                           "Update order")
    lines += _config_lines("RollbackConfig", "rollbackConfig", spec.get("rollbackConfig"),
                           "Rollback order")
    lines += ["ContainerSpec:", _line("Image", template.get("image") or printers.NONE, 1)]
    if template.get("entrypoint"):
        lines.append(_line("Command", " ".join(template["entrypoint"]), 1))
    if template.get("command") or template.get("args"):
        args = list(template.get("command") or []) + list(template.get("args") or [])
        lines.append(_line("Args", " ".join(args), 1))
    env = template.get("env") or {}
    if env:
        lines.append(_line("Env", " ".join(f"{k}={v}" for k, v in sorted(env.items())), 1))
    health = template.get("healthcheck") or {}
    if health.get("test"):
        lines.append(_line("Healthcheck", " ".join(health["test"]), 1))
    for key, title in (("configs", "Configs"), ("secrets", "Secrets")):
        # As docker's --pretty: each file's target, then where it comes from; Shoal adds
        # the owner and mode when they are not Swarm's root:root 0444.
        refs = [r for r in template.get(key) or [] if isinstance(r, dict)]
        if refs:
            lines.append(f" {title}:")
        for ref in refs:
            lines += [_line("Target", ref.get("target") or ref.get("source"), 2),
                      _line("Source", ref.get("source"), 3)]
            owner = (str(ref.get("uid", "0")), str(ref.get("gid", "0")), ref.get("mode", 0o444))
            if owner != ("0", "0", 0o444) and isinstance(owner[2], int):
                lines.append(_line("Owner", f"{owner[0]}:{owner[1]} mode {owner[2]:04o}", 3))
    if template.get("stopGracePeriod") is not None:
        lines.append(_line("Stop Grace Period", template["stopGracePeriod"], 1))
    resources = template.get("resources") or {}
    if resources:
        lines.append("Resources:")
        for section, title in (("reservations", "Reservations"), ("limits", "Limits")):
            values = resources.get(section) or {}
            if values:
                lines.append(f" {title}:")
                if values.get("cpus") is not None:
                    lines.append(_line("CPU", human_cpus(values["cpus"]), 2))
                if values.get("memory") is not None:
                    lines.append(_line("Memory", _size(values["memory"]), 2))
    if spec.get("networks"):
        lines.append(_line("Networks", " ".join(_network_text(n)
                                                for n in spec["networks"])))
    endpoint = spec.get("endpoint") or {}
    lines.append(_line("Endpoint Mode", endpoint.get("mode", "vip")))
    allocated = {(p.protocol, p.target, p.mode): p.published
                 for p in nw.endpoint(service).ports if p.published is not None}
    ports = nw.spec_ports(service)
    if ports:
        lines.append("Ports:")
        for port in ports:
            published = port.published or allocated.get((port.protocol, port.target,
                                                          port.mode))
            lines += [f" PublishedPort = {published if published else '<pending>'}",
                      f"  Protocol = {port.protocol}",
                      f"  TargetPort = {port.target}",
                      f"  PublishMode = {port.mode}"]
    return "\n".join(lines)


def _network_text(item: Any) -> str:
    """One ``spec.networks`` entry: its name, with its aliases when it has some."""
    name = nw.network_entry_name(item) or str(item)
    aliases = nw.network_entry_aliases(item)
    return f"{name} (aliases: {', '.join(aliases)})" if aliases else name
