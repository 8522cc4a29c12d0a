"""``swctl get KIND [NAME]``: list or show objects, and ``-w`` to keep watching them.

The list is one consistent snapshot (one etcd revision); ``-w`` then watches from exactly
that revision, so no change between the list and the watch is lost or shown twice. In
watch mode every change prints one row aligned with the table above it, as kubectl does,
until SIGINT or SIGTERM, which end the command quietly with exit code 0.

Services show REPLICAS as ``running/desired`` like ``docker service ls``. No field holds
that: it is counted from one listing of the tasks of the same namespaces, so it can never
be stale in etcd. With ``-w`` the tasks are watched too, from that listing's revision,
and the counts kept current event by event: a service's row is printed again whenever
its REPLICAS cell changes (``0/3`` ... ``3/3`` as its tasks start), as ``kubectl get
deploy -w`` shows a deployment's ready count moving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from shoal.cli import common, console, errors, keyring, printers, redact, taskview
from shoal.crds import kinds, resource, selectors
from shoal.store import client, maintenance, watch
from shoal.store import errors as store_errors


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "get", parents=parents, help="list objects of a kind, or show one",
        description="List objects of KIND (plural, singular or short name such as svc, "
                    "no, crd), or show the one called NAME.")
    p.add_argument("kind", metavar="KIND", help="a kind, or TYPE/NAME (service/web)")
    p.add_argument("name", metavar="NAME", nargs="?")
    add_output_flag(p)
    p.add_argument("-l", "--selector", metavar="SELECTOR",
                   help="label selector, e.g. app=web,tier!=db,env in (a,b)")
    add_namespace_flags(p)
    p.add_argument("-w", "--watch", action="store_true",
                   help="after listing, print changes as they happen until interrupted")
    p.add_argument("--show-values", action="store_true", help=redact.SHOW_VALUES_HELP)
    p.set_defaults(func=run, error_code=1)


def add_output_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=[f for f in printers.FORMATS if f != "table"],
                   default="table", help="output format (default: a table)")


def add_namespace_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true",
                   help="objects of every namespace")


def not_found(info: kinds.KindInfo, name: str, namespace: str | None) -> errors.CliError:
    where = f' in namespace "{namespace}"' if namespace else ""
    hint = f"swctl get {info.plural}" + (f" -n {namespace}" if namespace else "")
    return errors.CliError(f'{info.plural} "{name}" not found{where} (list them with `{hint}`)')


def parse_selector(text: str | None) -> selectors.Selector:
    try:
        return selectors.parse(text)
    except ValueError as exc:
        raise errors.CliError(str(exc)) from None


# `get all` as in kubectl: the kinds people mean by "what is running", not every kind.
ALL_KINDS = ("services", "tasks")


def resolve_kinds(registry: kinds.Registry, text: str) -> list[kinds.KindInfo]:
    """``svc``, ``svc,no`` or ``all`` to the kinds they name (unknown names raise)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    out: list[kinds.KindInfo] = []
    for name in names:
        infos = [registry.lookup(k) for k in ALL_KINDS] if name == "all" else [
            registry.lookup(name)]
        out.extend(i for i in infos if i not in out)
    if not out:
        raise errors.CliError(f'no kind given in "{text}": e.g. swctl get services')
    return out


#: The kinds whose listing starts with a warning when etcd is out of space: where a user
#: looks when the cluster stopped changing (etcd cannot record an Event while full).
ALARM_KINDS = ("Event", "Node")


async def warn_alarm(store: client.Store) -> None:
    """``warning: etcd is out of space ...`` on stderr while etcd's NOSPACE alarm is up."""
    try:
        report = await maintenance.alarm_report(store.etcd, maintenance.quota_if_known())
    except store_errors.StoreError:
        return  # a certificate that may not ask (a node's): the listing still helps
    if report:
        sys.stderr.write(f"warning: etcd is out of space and refuses writes ({report}); "
                         "the controller-managers recover it by themselves, see `swctl "
                         "etcd status` and `swctl etcd recover-space`\n")


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    args.kind, given = common.split_refs(args.kind, [args.name] if args.name else [])
    if len(given) > 1:
        raise errors.CliError("get shows one object by name; list several with "
                              f"swctl get {args.kind} -l SELECTOR")
    args.name = given[0] if given else None
    if args.all_namespaces and args.name:
        raise errors.CliError("a single object cannot be retrieved by name across all "
                              "namespaces; drop -A and pass -n NAMESPACE")
    selector = parse_selector(args.selector)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        infos = resolve_kinds(registry, args.kind)
        if len(infos) > 1:
            if args.name or args.watch:
                raise errors.CliError(f'"{args.kind}" names several kinds; NAME and -w need '
                                      "exactly one kind")
            await _several(store, infos, selector, args)
            return 0
        info = infos[0]
        if info.kind in ALARM_KINDS:
            await warn_alarm(store)
        namespace = None if args.all_namespaces else common.namespace_for(info, args.namespace)
        objs, revision = await store.list(info, namespace, selector)
        objs = redact.for_output(objs, _show_values(args), keyring.Source.from_args(args))
        if args.name:
            objs = [o for o in objs if o.name == args.name]
            if not objs:
                raise not_found(info, args.name, namespace)
        replicas = ReplicaCounts(store, namespace) if _counts_replicas(
            info, args.output) else None
        if replicas is not None and objs:
            await replicas.refresh()
        printer = printers.TablePrinter(info, wide=args.output == "wide",
                                        all_namespaces=args.all_namespaces,
                                        color=console.stdout_is_tty(),
                                        overrides=cell_overrides(info, replicas))
        if objs or args.output in ("json", "yaml"):
            console.out(printers.format_objects(info, objs, args.output,
                                                single=bool(args.name), printer=printer))
        elif not args.watch:
            _nothing_found(namespace)
        if args.watch:
            await _watch(store, info, namespace, selector, args, printer, objs, revision,
                         replicas=replicas)
    return 0


#: The ERROR cell (``-o wide``) of services and tasks: what went wrong, as ``service ps``
#: says it, computed rather than read from one field (a condition's message, or err).
ERROR_CELLS: dict[str, Callable[[resource.Resource], str]] = {
    "Service": taskview.failed_conditions, "Task": taskview.error_cell}


def cell_overrides(info: kinds.KindInfo, replicas: ReplicaCounts | None,
                   ) -> dict[str, printers.CellOverride]:
    """Cells computed by swctl for ``info``: REPLICAS from the tasks, ERROR, and a
    task's STATE (``unknown`` while its node is down)."""
    out = replicas.overrides() if replicas is not None else {}
    error = ERROR_CELLS.get(info.kind)
    if error is not None:
        out["ERROR"] = lambda obj: error(obj) or printers.NONE
    if info.kind == "Task":
        out["STATE"] = taskview.state_cell
    return out


def _show_values(args: argparse.Namespace) -> bool:
    # `service ls` reuses run() with a Namespace of its own, without the flag.
    return bool(getattr(args, "show_values", False))


def _counts_replicas(info: kinds.KindInfo, output: str) -> bool:
    return info.kind == "Service" and output in ("table", "wide")


class ReplicaCounts:
    """The REPLICAS cell of services, counted from the tasks of ``namespace`` (None: all
    namespaces): one list call, then kept current from the task watch (``apply``)."""

    def __init__(self, store: client.Store, namespace: str | None) -> None:
        self._store = store
        self.tasks = kinds.Registry.builtin().lookup("tasks")
        self._namespace = namespace
        self.counts: dict[taskview.ServiceKey, tuple[int, int]] = {}
        self.revision = 0  # of the listing the counts start from
        # task -> (its service, running): what it adds to ``counts``
        self._shares: dict[tuple[str | None, str], tuple[taskview.ServiceKey, int]] = {}

    async def refresh(self) -> None:
        tasks, self.revision = await self._store.list(self.tasks, self._namespace)
        self.reset(tasks)

    def reset(self, tasks: list[resource.Resource]) -> None:
        self.counts, self._shares = {}, {}
        for task in tasks:
            self._set(task)

    def apply(self, event: watch.WatchEvent) -> set[taskview.ServiceKey]:
        """Count one task event; the services whose counts it changed."""
        if event.type == watch.RESET:
            before = dict(self.counts)
            self.reset(event.objects)
            return {k for k in before.keys() | self.counts.keys()
                    if before.get(k) != self.counts.get(k)}
        assert event.obj is not None
        changed = self._unset(event.obj)
        if event.type != watch.DELETED:
            changed |= self._set(event.obj)
        return changed

    def _set(self, task: resource.Resource) -> set[taskview.ServiceKey]:
        share = taskview.replica_share(task)
        if share is None:
            return set()
        key, running = share
        self._shares[(task.namespace, task.name)] = share
        have_running, wanted = self.counts.get(key, (0, 0))
        self.counts[key] = (have_running + running, wanted + 1)
        return {key}

    def _unset(self, task: resource.Resource) -> set[taskview.ServiceKey]:
        share = self._shares.pop((task.namespace, task.name), None)
        if share is None:
            return set()
        key, running = share
        have_running, wanted = self.counts[key]
        if wanted > 1:
            self.counts[key] = (have_running - running, wanted - 1)
        else:
            del self.counts[key]
        return {key}

    def cell(self, service: resource.Resource) -> str:
        return taskview.replicas_cell(service, self.counts)

    def overrides(self) -> dict[str, printers.CellOverride]:
        return {"REPLICAS": self.cell}


def _nothing_found(namespace: str | None) -> None:
    # Nothing on stdout (scripts see an empty result); a note for people on stderr, as
    # kubectl does.
    scope = "" if namespace is None else f" in {namespace} namespace"
    print(f"No resources found{scope}.", file=sys.stderr)


async def _several(store: client.Store, infos: list[kinds.KindInfo],
                   selector: selectors.Selector, args: argparse.Namespace) -> None:
    """``get all`` / ``get svc,tasks``: one table per kind with ``kind/name`` names, or
    one List holding every object for json and yaml."""
    found: list[tuple[kinds.KindInfo, list[resource.Resource]]] = []
    for info in infos:
        namespace = None if args.all_namespaces else common.namespace_for(info, args.namespace)
        objs, _ = await store.list(info, namespace, selector)
        found.append((info, redact.for_output(objs, _show_values(args),
                                              keyring.Source.from_args(args))))
    if args.output in ("json", "yaml"):
        everything = [o for _, objs in found for o in objs]
        console.out(printers.format_objects(infos[0], everything, args.output, single=False))
        return
    sections = []
    for info, objs in found:
        if objs:
            replicas = None
            if _counts_replicas(info, args.output):
                namespace = (None if args.all_namespaces
                             else common.namespace_for(info, args.namespace))
                replicas = ReplicaCounts(store, namespace)
                await replicas.refresh()
            overrides = cell_overrides(info, replicas)
            printer = printers.TablePrinter(info, wide=args.output == "wide",
                                            all_namespaces=args.all_namespaces,
                                            color=console.stdout_is_tty(), qualify=True,
                                            overrides=overrides)
            sections.append(printers.format_objects(info, objs, args.output, single=False,
                                                    printer=printer))
    if sections:
        console.out(("\n" if args.output == "name" else "\n\n").join(sections))
    else:
        _nothing_found(None if args.all_namespaces else args.namespace or "default")


async def _watch(store: client.Store, info: kinds.KindInfo, namespace: str | None,
                 selector: selectors.Selector, args: argparse.Namespace,
                 printer: printers.TablePrinter, objs: list[resource.Resource],
                 revision: int, replicas: ReplicaCounts | None = None) -> None:
    """Print every change after ``revision`` until SIGINT/SIGTERM; with ``replicas``
    (services), also a service's row whenever its REPLICAS cell changes."""
    known: dict[tuple[str | None, str], resource.Resource] = {
        (o.namespace, o.name): o for o in objs}
    shown_cell: dict[tuple[str | None, str], str] = {}
    ring = keyring.Source.from_args(args)

    def show(obj: resource.Resource) -> None:
        obj = redact.for_output([obj], _show_values(args), ring)[0]
        if replicas is not None:
            shown_cell[(obj.namespace, obj.name)] = replicas.cell(obj)
        if args.output in ("json", "yaml"):
            text = printers.format_objects(info, [obj], args.output, single=True)
            console.out(("---\n" + text) if args.output == "yaml" else text)
        else:
            console.out(printers.format_objects(info, [obj], args.output, single=True,
                                                printer=printer))

    if replicas is not None:
        for obj in objs:
            shown_cell[(obj.namespace, obj.name)] = replicas.cell(obj)

    def wanted(obj: resource.Resource) -> bool:
        return (not args.name or obj.name == args.name) and selector.matches(
            obj.metadata.labels)

    async def follow() -> None:
        async for event in watch.watch_kind(store, info, namespace, since_revision=revision):
            if event.type == watch.RESET:
                # History was compacted while we were away: show the fresh state.
                known.clear()
                for obj in event.objects:
                    if wanted(obj):
                        known[(obj.namespace, obj.name)] = obj
                        show(obj)
                continue
            assert event.obj is not None
            key = (event.obj.namespace, event.obj.name)
            if event.type == watch.DELETED:
                last = known.pop(key, None)
                if last is not None:
                    show(last)  # kubectl prints the object's last state on deletion
            elif wanted(event.obj):
                known[key] = event.obj
                show(event.obj)
            elif known.pop(key, None) is not None:
                show(event.obj)  # it stopped matching the selector: its last change

    async def follow_replicas(counts: ReplicaCounts) -> None:
        async for event in watch.watch_kind(store, counts.tasks, namespace,
                                            since_revision=counts.revision):
            for svc_key in counts.apply(event):
                svc = known.get(svc_key)
                if svc is not None and shown_cell.get(svc_key) != counts.cell(svc):
                    show(svc)

    followers = [follow()]
    if replicas is not None:
        followers.append(follow_replicas(replicas))
    task = asyncio.ensure_future(asyncio.gather(*followers))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
