"""``swctl rollout status|history|undo|pause|resume|restart service/NAME``: kubectl's
rollout verbs on a Service's update lifecycle (docs/updater.md).

swctl only writes requests and reads status; the updater does the work. So each verb is
a small compare-and-swap edit of the Service (a conflict re-reads and edits again, never
overwriting another writer) or a read:

* ``status`` follows the rollout with ``converge``'s progress and exits by what the
  updater says (``updatestatus``): 0 once completed (or an asked-for rollback
  completed), 1 with the message when paused or rolled back automatically.
* ``history`` shows ``status.revisions`` (``revisions``), ``undo`` asks for a rollback
  (``rollback``), ``pause``/``resume`` set ``spec.paused`` (resume also stamps
  ``shoal.io/resumed-at``, which resumes an update paused by failures), ``restart``
  bumps ``spec.forceUpdate`` with its change cause.

Targets are ``service/NAME`` (also ``svc/NAME``) or ``service NAME``, as kubectl's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Final

from shoal.cli import (
    changecause,
    common,
    console,
    converge,
    edits,
    errors,
    get,
    printers,
    revisions,
    rollback,
)
from shoal.crds import kinds, resource, units
from shoal.crds import updatemeta as um
from shoal.store import client
from shoal.store import errors as store_errors

#: ``rollout status --timeout 0`` (the default, as kubectl's): wait as long as it takes.
FOREVER: Final = 10 * 365 * 86400.0


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rollout", parents=parents, help="follow, undo, pause or restart a service's update",
        description="kubectl's rollout verbs on services: follow an update (status), list "
                    "its revisions (history), roll back (undo), pause, resume, restart.")
    verbs = p.add_subparsers(dest="rollout_verb", metavar="COMMAND", required=True)

    st = _verb(verbs, parents, "status", "follow a service's update until it ends",
               "Show the update's progress until it completes (exit 0), or is paused or "
               "rolled back automatically (exit 1, with the reason).")
    st.add_argument("--timeout", type=_duration, default=0.0, metavar="DURATION",
                    help="give up after this long, exit 1 (e.g. 90s, 5m; default 0: no "
                         "limit)")
    st.add_argument("--verify-window", type=_duration,
                    default=converge.DEFAULT_VERIFY_WINDOW, metavar="DURATION",
                    help="how long the tasks must stay running to count as converged "
                         f"(default {converge.DEFAULT_VERIFY_WINDOW:g}s)")
    st.set_defaults(func=run_status)

    hist = _verb(verbs, parents, "history", "list a service's revisions",
                 "List the revisions a service keeps (spec.revisionHistoryLimit), oldest "
                 "first, the current one marked; with --revision N, that revision's spec.")
    hist.add_argument("--revision", type=int, metavar="N", help="show revision N in full")
    hist.set_defaults(func=run_history)

    undo = _verb(verbs, parents, "undo", "roll a service back to an earlier revision",
                 "Ask the updater to roll back to the previous revision (or --to-revision "
                 "N), then follow the rollback (unless -d).")
    undo.add_argument("--to-revision", type=int, metavar="N",
                      help="the revision to go back to (see rollout history; default: the "
                           "previous one)")
    converge.add_wait_flags(undo)
    undo.set_defaults(func=run_undo)

    for name, what in (("pause", "stop replacing tasks (tasks in flight finish)"),
                       ("resume", "continue a paused update")):
        v = _verb(verbs, parents, name, what, what[0].upper() + what[1:] + ".")
        v.set_defaults(func=run_pause if name == "pause" else run_resume)
    rs = _verb(verbs, parents, "restart", "replace every task of a service, one batch at "
               "a time", "Replace every task by the service's updateConfig (bumps "
               "spec.forceUpdate, as docker service update --force).")
    rs.set_defaults(func=run_restart)


def _verb(verbs: Any, parents: list[argparse.ArgumentParser], name: str, help_: str,
          description: str) -> argparse.ArgumentParser:
    v: argparse.ArgumentParser = verbs.add_parser(
        name, parents=parents, help=help_, description=description,
        epilog=f"example: swctl rollout {name} service/web")
    v.add_argument("target", metavar="service/NAME", help="service/NAME, or service NAME")
    v.add_argument("name", metavar="NAME", nargs="?", help=argparse.SUPPRESS)
    v.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace (default: default)")
    v.set_defaults(error_code=1)
    return v


def _duration(text: str) -> float:
    try:
        return units.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'invalid duration "{text}": {exc}') from None


def service_name(target: str, name: str | None) -> str:
    """``service/web``, ``svc/web`` or ``service web`` -> ``web``."""
    kind, names = common.split_refs(target, [name] if name else [])
    if "/" not in target and not names:
        raise errors.CliError(f'"{target}" names no service: give service/NAME (e.g. '
                              f"swctl rollout status service/{target})")
    if len(names) != 1:
        raise errors.CliError("give one service: service/NAME or service NAME")
    try:
        info = kinds.Registry.builtin().lookup(kind)
    except kinds.UnknownKindError:
        info = None
    if info is None or info.kind != "Service":
        raise errors.CliError(f'rollout works on services, not "{kind}": give '
                              f"service/{names[0]}")
    return names[0]


async def _read(store: client.Store, args: argparse.Namespace
                ) -> tuple[kinds.KindInfo, resource.Resource]:
    name = service_name(args.target, args.name)
    info = (await common.registry_of(store)).lookup("services")
    namespace = rollback.namespace_of(info, args.namespace)
    try:
        return info, await store.get(info, name, namespace)
    except store_errors.NotFoundError:
        raise get.not_found(info, name, namespace) from None


async def _edit(store: client.Store, info: kinds.KindInfo, service: resource.Resource,
                edit: Callable[[resource.Resource], None]) -> resource.Resource:
    return await edits.edit(store, info, service, edit, f"changing {service.name}")


def _ref(service: resource.Resource) -> str:
    return f"service/{service.name}"


# --- status ---

async def run_status(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    wait = converge.WaitOptions(timeout=args.timeout or FOREVER,
                                verify_window=args.verify_window)
    async with common.open_store(opts) as store:
        _, service = await _read(store, args)
        await converge.wait_for_services(
            store, [(service.namespace or resource.DEFAULT_NAMESPACE, service.name)], wait)
    console.out(f'service "{service.name}" successfully rolled out')
    return 0


# --- history ---

async def run_history(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        _, service = await _read(store, args)
    if args.revision is not None:
        console.out(revisions.revision_yaml(service, args.revision))
        return 0
    rows = revisions.history_rows(service)
    if not rows:
        raise revisions.no_history(service)
    table, _ = printers.render_table(revisions.HISTORY_HEADERS, rows,
                                     color=console.stdout_is_tty())
    console.out(table)
    return 0


# --- undo ---

async def run_undo(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    wait = converge.options_from(args)
    if args.to_revision is not None and args.to_revision < 0:
        raise errors.CliError(f"--to-revision {args.to_revision}: a revision is a number "
                              ">= 1 (0 means the previous one)")
    name = service_name(args.target, args.name)
    async with common.open_store(opts) as store:
        info = rollback.service_info(await common.registry_of(store))
        namespace = rollback.namespace_of(info, args.namespace)
        target = await rollback.request(store, info, name, namespace, args.to_revision)
        console.out(f"service/{name} rolling back to {rollback.describe_target(target)}")
        await rollback.follow(store, namespace, name, wait)
    return 0


# --- pause, resume, restart ---

async def run_pause(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        info, service = await _read(store, args)
        if service.spec.get("paused") is True:
            console.out(f"{_ref(service)} already paused")
            return 0

        def pause(obj: resource.Resource) -> None:
            obj.spec["paused"] = True
        await _edit(store, info, service, pause)
    console.out(f"{_ref(service)} paused")
    return 0


def _paused(service: resource.Resource) -> bool:
    """Paused by the user (spec.paused), or by failures (status.update)."""
    state = um.update_status(service).get("state")
    return service.spec.get("paused") is True or state in (um.PAUSED, um.ROLLBACK_PAUSED)


async def run_resume(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        info, service = await _read(store, args)
        if not _paused(service):
            console.out(f"{_ref(service)} is not paused (nothing to resume)")
            return 0
        stamp = resource.now_rfc3339()

        def resume(obj: resource.Resource) -> None:
            obj.spec["paused"] = False
            # Failures of tasks that ended before now no longer count (docs/updater.md).
            obj.metadata.annotations[um.RESUMED_AT] = stamp
        await _edit(store, info, service, resume)
    console.out(f"{_ref(service)} resumed")
    return 0


async def run_restart(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    cause = changecause.of(args)
    async with common.open_store(opts) as store:
        info, service = await _read(store, args)

        def restart(obj: resource.Resource) -> None:
            force = obj.spec.get("forceUpdate")
            obj.spec["forceUpdate"] = (force if type(force) is int and force >= 0 else 0) + 1
            changecause.mark(obj, cause)
        await _edit(store, info, service, restart)
    console.out(f"{_ref(service)} restarted")
    return 0
