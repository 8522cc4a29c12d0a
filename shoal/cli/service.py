"""``swctl service``: the ``docker service`` verbs people reach for — ``ps``, ``ls`` and
``scale`` — on top of the kubectl-style core.

``service ps NAME`` is the per-task view: one row per slot (per node for a global
service) for its current task, with that slot's older tasks beneath as ``\\_ web.1``
rows, newest first, exactly like ``docker service ps``. ``service ls`` is ``get
services`` and ``service scale`` is ``scale``, so there is one implementation of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from shoal.cli import common, console, get, printers, rebalance, scale, serviceverbs, taskview
from shoal.crds import networking as nw
from shoal.crds import resource
from shoal.crds import taskstates as ts
from shoal.store import errors as store_errors

ID_LENGTH: Final = 12  # docker's short IDs
ERROR_LENGTH: Final = 30  # docker truncates the ERROR column to this many characters
PS_HEADERS: Final = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("service", aliases=["svc"], parents=parents,
                       help="docker's service verbs: create, update, ps, ls, scale, rebalance, ...",
                       description="Docker's service verbs: create, update, inspect, rm, "
                                   "logs, their tasks (ps), the list (ls), scaling (scale), and "
                                   "rebalance (Shoal's: even the tasks out over the nodes).")
    verbs = p.add_subparsers(dest="service_verb", metavar="COMMAND", required=True)

    ps = verbs.add_parser(
        "ps", parents=parents, help="list the tasks of services, with their history",
        description="List the tasks of one or more services: each slot's current task, "
                    "with its older tasks beneath as \\_ lines, newest first.")
    ps.add_argument("names", nargs="+", metavar="NAME")
    ps.add_argument("-n", "--namespace", type=common.namespace_arg,
                    help="namespace (default: default)")
    ps.add_argument("--no-trunc", action="store_true",
                    help="do not shorten IDs, images and errors")
    ps.add_argument("-a", "--all", action="store_true",
                    help="also slots the service no longer has (scaled away, nodes no "
                         "longer eligible)")
    ps.add_argument("-q", "--quiet", action="store_true", help="only print task IDs")
    ps.set_defaults(func=run_ps, error_code=1)

    ls = verbs.add_parser("ls", aliases=["list"], parents=parents,
                          help="list services (same as get services)")
    get.add_output_flag(ls)
    ls.add_argument("-l", "--selector", metavar="SELECTOR", help="label selector")
    get.add_namespace_flags(ls)
    ls.set_defaults(func=run_ls, error_code=1)

    sc = verbs.add_parser("scale", parents=parents, help="same as swctl scale",
                          description="Set replica counts: swctl service scale web=3 api=2.")
    scale.add_scale_arguments(sc)
    serviceverbs.add_verbs(verbs, parents)
    rebalance.add_parser(verbs, parents)


# --- ps ---

def short_id(task: resource.Resource, no_trunc: bool) -> str:
    uid = task.metadata.uid or task.metadata.name
    return uid if no_trunc else uid.replace("-", "")[:ID_LENGTH]


def _image(task: resource.Resource, service: resource.Resource, no_trunc: bool) -> str:
    template = task.spec.get("template") or service.spec.get("template") or {}
    image = str(template.get("image") or "")
    # As docker: the digest is noise in a table unless asked for.
    return image if no_trunc else image.split("@", 1)[0]


def _error(task: resource.Resource, no_trunc: bool) -> str:
    text = taskview.error_cell(task).replace("\n", " ")
    if not text:
        return ""
    if not no_trunc and len(text) > ERROR_LENGTH:
        text = text[:ERROR_LENGTH - 1] + "\u2026"
    return f'"{text}"'


def shown_slots(slots: Sequence[taskview.Slot], show_all: bool) -> list[taskview.Slot]:
    """Slots ``service ps`` lists: those with a task wanted running, and those whose last
    task ended by itself (a crash the restart policy gave up on is what users look for).
    Slots the service no longer has — scaled away, node gone — only with ``--all``."""
    if show_all:
        return list(slots)
    return [s for s in slots if s.active or ts.ended_by_itself(s.tasks[0])]


def ps_rows(service: resource.Resource, tasks: Sequence[resource.Resource], *,
            no_trunc: bool = False, show_all: bool = False,
            now: float | None = None) -> list[tuple[resource.Resource, list[str]]]:
    """(task, row) pairs: each slot's current task, then its history newest first."""
    now = time.time() if now is None else now
    mode = taskview.mode_of(service)
    out = []
    for slot in shown_slots(taskview.group_slots(tasks, mode), show_all):
        label = taskview.slot_label(service.name, slot)
        for i, task in enumerate([slot.current, *slot.history]):
            name = label if i == 0 else f" \\_ {label}"
            out.append((task, [short_id(task, no_trunc), name,
                               _image(task, service, no_trunc),
                               ts.node_name_of(task) or "",
                               ts.desired_state(task).capitalize(),
                               taskview.current_state_cell(task, now),
                               _error(task, no_trunc)]))
    return out


async def run_ps(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = registry.lookup("services")
        namespace = common.namespace_for(info, args.namespace) or "default"
        services = []
        for name in dict.fromkeys(args.names):  # once each, in the order given
            try:
                services.append(await store.get(info, name, namespace))
            except store_errors.NotFoundError:
                raise get.not_found(info, name, namespace) from None
        tasks, _ = await store.list(registry.lookup("tasks"), namespace)
    print_ps(services, tasks, no_trunc=args.no_trunc, show_all=args.all, quiet=args.quiet,
             what=", ".join(s.name for s in services))
    return 0


def print_ps(services: Sequence[resource.Resource], tasks: Sequence[resource.Resource], *,
             no_trunc: bool, show_all: bool, quiet: bool, what: str) -> None:
    """The ``service ps`` table of ``services`` (one namespace) from ``tasks``; ``what``
    names them in the note printed when there is no task. ``stack ps`` shares it."""
    grouped = taskview.tasks_by_service(tasks)
    rows: list[tuple[resource.Resource, list[str]]] = []
    for service in services:
        key = (service.namespace or resource.DEFAULT_NAMESPACE, service.name)
        rows += ps_rows(service, grouped.get(key, []), no_trunc=no_trunc, show_all=show_all)
    if quiet:
        console.out("\n".join(short_id(task, no_trunc) for task, _ in rows))
        return
    if not rows:
        wants = any(taskview.mode_of(s) == taskview.GLOBAL or taskview.replicas_of(s) > 0
                    for s in services)
        hint = " yet: is the controller-manager running? (swctl up)" if wants else ""
        print(f"No tasks found for {what}{hint}", file=sys.stderr)
        return
    table, _ = printers.render_table(PS_HEADERS, [row for _, row in rows],
                                     color=console.stdout_is_tty())
    console.out(table)


def ports_cell(service: resource.Resource) -> str:
    """Docker's PORTS: ``*:8080->80/tcp`` per published port, the allocated port where
    the allocator chose one (``<pending>`` until it has), empty when nothing is published."""
    allocated = {(p.protocol, p.target, p.mode): p.published
                 for p in nw.endpoint(service).ports if p.published is not None}
    cells = []
    for port in nw.spec_ports(service):
        published = port.published or allocated.get((port.protocol, port.target, port.mode))
        shown = str(published) if published is not None else "<pending>"
        cells.append(f"*:{shown}->{port.target}/{port.protocol}")
    return ",".join(cells)


async def run_ls(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    as_get = argparse.Namespace(kind="services", name=None, output=args.output,
                                selector=args.selector, namespace=args.namespace,
                                all_namespaces=args.all_namespaces, watch=False)
    if args.output not in ("table", "wide"):
        return await get.run(as_get, opts)  # the objects themselves: one implementation
    selector = get.parse_selector(args.selector)
    async with common.open_store(opts) as store:
        info = (await common.registry_of(store)).lookup("services")
        namespace = None if args.all_namespaces else common.namespace_for(info, args.namespace)
        services, _ = await store.list(info, namespace, selector)
        replicas = get.ReplicaCounts(store, namespace)
        if services:
            await replicas.refresh()
    if not services:
        return await get.run(as_get, opts)  # its "No resources found" note
    printer = printers.TablePrinter(info, wide=args.output == "wide",
                                    all_namespaces=args.all_namespaces,
                                    color=console.stdout_is_tty(),
                                    overrides=replicas.overrides(),
                                    extra=[("PORTS", ports_cell)])
    console.out(printer.render(services))
    return 0
