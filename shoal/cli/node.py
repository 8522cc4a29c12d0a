"""``swctl node``: list, inspect and manage nodes the way ``docker node`` does.

Verbs: ``ls``, ``inspect``, ``update`` (availability, role, labels), ``rm`` and the
one-word shortcuts ``drain``, ``activate``, ``pause``, ``promote``, ``demote``.

``ls`` marks the local node with ``*`` after its ID, as docker marks the node it talks
to: a node is local when its reported hostname is this host's and its address is one of
this host's interface addresses (so the nodes of ``swctl up --nodes N``, each in its own
network namespace with its own address, are not, and neither are the K simulated nodes
of ``--count K``, which report their own names as hostnames). ``rm`` refuses a node that
is not down unless ``--force``, like ``docker node rm``; the orchestrator then replaces
the tasks the node held (their node is gone) and deletes them.

Only ``spec`` (availability, role) and ``metadata.labels`` are written; ``status`` belongs
to the node's agent. Node labels are ``metadata.labels`` (what constraints call
``node.labels.<k>``); a restarting agent re-applies its own ``--label`` keys but keeps
labels added here. Every write is compare-and-swap with re-read on conflict, because the
agent updates the same object (status, labels) every few seconds.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from shoal.cli import common, console, errors, pretty, printers, taskview
from shoal.crds import kinds, resource
from shoal.join import access, managers, membership, service
from shoal.runtime import cas
from shoal.store import client
from shoal.store import errors as store_errors

CONFLICT_ATTEMPTS = 8
# How many node names an unknown-node error lists before "and N more".
KNOWN_SHOWN = 5
AVAILABILITIES = ("active", "pause", "drain")
ROLES = ("manager", "worker")
# Kubernetes-style label keys: an optional DNS prefix and a name of letters, digits,
# "-", "_" and "." starting and ending alphanumeric.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                        r"[A-Za-z0-9])?$")

# shortcut verb -> (spec field, value, past tense for the result line)
SHORTCUTS: dict[str, tuple[str, str, str]] = {
    "drain": ("availability", "drain", "drained"),
    "activate": ("availability", "active", "activated"),
    "pause": ("availability", "pause", "paused"),
    "promote": ("role", "manager", "promoted"),
    "demote": ("role", "worker", "demoted"),
}


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", parents=parents, help="list and manage nodes",
                       description="List, inspect and manage the cluster's nodes.")
    verbs = p.add_subparsers(dest="node_verb", metavar="COMMAND", required=True)

    ls = verbs.add_parser(
        "ls", aliases=["list"], parents=parents, help="list nodes",
        description="List nodes: ID (* marks this host's node), name, status, "
                    "availability, role, address, tasks; -o wide adds the runtime and "
                    "labels.")
    ls.add_argument("-q", "--quiet", action="store_true", help="only print node names")
    ls.add_argument("-l", "--selector", metavar="SELECTOR",
                    help="only nodes whose labels match, e.g. zone=a")
    ls.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="docker's filters (repeatable; all must match): name=, id=, "
                         "role=, label= (engine labels), node.label=, membership=")
    ls.add_argument("-o", "--output", choices=("wide",), default=None,
                    help="wide: also the runtime and labels of each node")
    ls.set_defaults(func=run_ls, error_code=1)

    inspect = verbs.add_parser("inspect", parents=parents, help="show nodes in full")
    inspect.add_argument("names", nargs="+", metavar="NAME")
    inspect.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    inspect.add_argument("--pretty", action="store_true",
                         help="for people: human units, and the tasks on the node")
    inspect.set_defaults(func=run_inspect, error_code=1)

    rm = verbs.add_parser(
        "rm", aliases=["remove"], parents=parents, help="remove nodes that are down",
        description="Remove nodes from the cluster. A node that is not down is refused "
                    "unless --force (its agent would otherwise keep running tasks the "
                    "cluster no longer knows about); the node's tasks are replaced "
                    "elsewhere.")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.add_argument("-f", "--force", action="store_true",
                    help="remove even a node that is ready")
    rm.set_defaults(func=run_rm, error_code=1)

    update = verbs.add_parser(
        "update", parents=parents, help="change a node's availability, role or labels",
        description="Change a node's availability (active takes tasks, pause takes no new "
                    "ones, drain moves its tasks away), role, or labels.")
    update.add_argument("name", metavar="NAME")
    update.add_argument("--availability", choices=AVAILABILITIES)
    update.add_argument("--role", choices=ROLES)
    update.add_argument("--label-add", action="append", default=[], metavar="KEY[=VALUE]",
                        help="add or change a label (repeatable)")
    update.add_argument("--label-rm", action="append", default=[], metavar="KEY",
                        help="remove a label (repeatable)")
    update.set_defaults(func=run_update, error_code=1)

    for verb, (field, value, _) in SHORTCUTS.items():
        short = verbs.add_parser(verb, parents=parents,
                                 help=f"set {field} to {value} (node update --{field} {value})")
        short.add_argument("names", nargs="+", metavar="NAME")
        short.set_defaults(func=run_shortcut, error_code=1, shortcut=verb)


# --- lookups ---

def _node_info(registry: kinds.Registry) -> kinds.KindInfo:
    return registry.lookup("nodes")


async def get_node(store: client.Store, info: kinds.KindInfo, name: str) -> resource.Resource:
    """The node called ``name``; an unknown name lists (a few of) the known ones."""
    try:
        return await store.get(info, name)
    except store_errors.NotFoundError:
        pass
    nodes, _ = await store.list(info)
    names = sorted(n.name for n in nodes)
    if not names:
        raise errors.CliError(f'node "{name}" not found: the cluster has no nodes yet (start '
                              "an agent with `swctl agent`, or a local cluster with `swctl "
                              "up`)")
    shown = ", ".join(names[:KNOWN_SHOWN])
    more = f" and {len(names) - KNOWN_SHOWN} more" if len(names) > KNOWN_SHOWN else ""
    raise errors.CliError(f'node "{name}" not found; known nodes: {shown}{more} (list them '
                          "with `swctl node ls`)")


# --- ls / inspect ---

ID_LENGTH = 12  # as service ps: docker's short IDs
LOCAL_MARK = "*"
FILTER_KEYS = ("name", "id", "role", "label", "node.label", "membership")


def short_id(node: resource.Resource) -> str:
    return (node.metadata.uid or node.name).replace("-", "")[:ID_LENGTH]


def is_local(node: resource.Resource, hostname: str, addresses: set[str]) -> bool:
    """Is ``node`` served by an agent on this host (see the module docstring)?"""
    return (node.status.get("hostname") == hostname
            and str(node.status.get("address") or "") in addresses)


def local_facts() -> tuple[str, set[str]]:
    """This host's hostname and interface addresses, what :func:`is_local` compares."""
    import socket

    from shoal.agent import node as agent_node  # light: no driver, no runtime

    return socket.gethostname(), agent_node.local_addresses()


def parse_filters(items: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in FILTER_KEYS:
            raise errors.CliError(f'invalid filter "{item}": node ls filters on '
                                  f"{', '.join(k + '=' for k in FILTER_KEYS)} (e.g. --filter "
                                  "role=manager)")
        if not eq or not value:
            raise errors.CliError(f'invalid filter "{item}": give a value, e.g. --filter '
                                  f"{key}={'zone=a' if 'label' in key else 'x'}")
        if key == "role" and value not in ROLES:
            raise errors.CliError(f'invalid filter "{item}": role is manager or worker')
        if key == "membership" and value not in ("accepted", "pending"):
            raise errors.CliError(f'invalid filter "{item}": membership is accepted or '
                                  "pending")
        out.append((key, value))
    return out


def _label_matches(labels: Any, wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    if not isinstance(labels, dict) or key not in labels:
        return False
    return not eq or str(labels[key]) == value


def filter_matches(node: resource.Resource, key: str, value: str) -> bool:
    """One docker filter: name is a substring, id a prefix, labels ``k`` or ``k=v``;
    every Shoal node is ``accepted`` (an agent joins without an approval step)."""
    if key == "name":
        return value in node.name
    if key == "id":
        return short_id(node).startswith(value.replace("-", "")) or \
            (node.metadata.uid or "").startswith(value)
    if key == "role":
        return str(node.spec.get("role") or "worker") == value
    if key == "label":
        return _label_matches(node.status.get("engineLabels"), value)
    if key == "node.label":
        return _label_matches(node.metadata.labels, value)
    return value == "accepted"  # membership


def ls_rows(nodes: Sequence[resource.Resource], per_node: dict[str, int], *,
            local: Callable[[resource.Resource], bool] = lambda _: False,
            wide: bool = False, manager_status: dict[str, str] | None = None,
            ) -> list[list[str]]:
    """``manager_status`` (node name -> Leader/Reachable/Unreachable) adds docker's
    MANAGER STATUS column, blank for workers."""
    rows = []
    for node in sorted(nodes, key=lambda n: n.name):
        ident = short_id(node) + (f" {LOCAL_MARK}" if local(node) else "")
        row = [ident, node.name, str(node.status.get("state") or "unknown"),
               str(node.spec.get("availability") or "active")]
        if manager_status is not None:
            row.append(manager_status.get(node.name, ""))
        row += [str(node.spec.get("role") or "worker"),
               str(node.status.get("address") or printers.NONE),
               str(per_node.get(node.name, 0))]
        if wide:
            labels = ",".join(f"{k}={v}" for k, v in sorted(node.metadata.labels.items()))
            row += [str(node.status.get("runtime") or printers.NONE), labels or printers.NONE]
        rows.append([*row, printers.age(node.metadata.creationTimestamp)])
    return rows


LS_HEADERS = ["ID", "NAME", "STATUS", "AVAILABILITY", "ROLE", "ADDRESS", "TASKS", "AGE"]
WIDE_HEADERS = [*LS_HEADERS[:-1], "RUNTIME", "LABELS", "AGE"]
MANAGER_STATUS = "MANAGER STATUS"


def with_manager_status(headers: list[str]) -> list[str]:
    return [*headers[:4], MANAGER_STATUS, *headers[4:]]


async def manager_statuses(store: client.Store,
                           nodes: Sequence[resource.Resource]) -> dict[str, str] | None:
    """MANAGER STATUS by node name when this cluster's managers are etcd members named
    after their nodes (``swctl init``/``join``); None otherwise (``swctl up``'s one etcd,
    an external etcd, or a certificate not allowed to list members), and no column."""
    try:
        statuses = await membership.manager_status(store.etcd)
    except store_errors.StoreError:
        return None
    names = {n.name for n in nodes}
    return statuses if any(name in names for name in statuses) else None


async def run_ls(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    from shoal.cli import get

    selector = get.parse_selector(args.selector)
    filters = parse_filters(args.filter)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        nodes, _ = await store.list(_node_info(registry), None, selector)
        nodes = [n for n in nodes if all(filter_matches(n, k, v) for k, v in filters)]
        if args.quiet:
            console.out("\n".join(sorted(n.name for n in nodes)))
            return 0
        # One listing of every task (all namespaces), counted per node.
        tasks, _ = await store.list(registry.lookup("tasks"))
        statuses = await manager_statuses(store, nodes) if nodes else None
    if not nodes:
        # As `get`: nothing on stdout, a note for people on stderr.
        print("No nodes found (start an agent with `swctl agent`, or `swctl up`)."
              if not (filters or args.selector) else "No nodes match.", file=sys.stderr)
        return 0
    hostname, addresses = local_facts()
    wide = args.output == "wide"
    headers = WIDE_HEADERS if wide else LS_HEADERS
    table, _ = printers.render_table(
        headers if statuses is None else with_manager_status(headers),
        ls_rows(nodes, taskview.tasks_per_node(tasks), wide=wide, manager_status=statuses,
                local=lambda n: is_local(n, hostname, addresses)),
        color=console.stdout_is_tty())
    console.out(table)
    return 0


async def run_inspect(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = _node_info(registry)
        found = [await get_node(store, info, name) for name in args.names]
        if not args.pretty:
            printers.print_inspected(found, args.output)
            return 0
        tasks, _ = await store.list(registry.lookup("tasks"))
    hostname, addresses = local_facts()
    console.out("\n\n".join(pretty.node_text(n, tasks, local=is_local(n, hostname, addresses))
                             for n in found))
    return 0


# --- rm ---

async def run_rm(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        info = _node_info(await common.registry_of(store))
        # Every name resolved and checked first: one refusal removes nothing.
        nodes = [await get_node(store, info, name) for name in dict.fromkeys(args.names)]
        refusals = []
        for node in nodes:
            state = str(node.status.get("state") or "unknown")
            if state != "down" and not args.force:
                refusals.append(f"node {node.name} is {state}, not down, and cannot be "
                                "removed: stop its agent first (the node is down one "
                                "heartbeat TTL later), drain it to move its tasks, or "
                                f"remove it anyway with `swctl node rm --force {node.name}`")
        members = await _member_names(store)
        for node in nodes:
            if node.name in members:
                refusals.append(f"node {node.name} is a manager (an etcd member) and cannot "
                                "be removed: demote it first with `swctl node demote "
                                f"{node.name}`")
        if refusals:
            raise errors.CliError([*refusals, "nothing was removed"])
        for node in nodes:
            # Its etcd user first (init/join clusters): the node's certificate stops
            # working now, and a swctl not allowed to do that fails before anything goes.
            await access.revoke_node(store.etcd, node.name)
            try:
                await store.delete(info, node.name)
            except store_errors.NotFoundError:
                pass  # removed meanwhile: what was asked for
            console.out(f"node/{node.name} removed")
    return 0


async def _member_names(store: client.Store) -> set[str]:
    """Names of the etcd members: a manager of an ``init``/``join`` cluster is the member
    named after its node (``swctl up``'s one etcd is named after no node)."""
    try:
        members = await store.etcd.member_list()
    except store_errors.StoreError:
        return set()
    return {m.name for m in members if m.name}


# --- update ---

def parse_label_add(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if not _LABEL_KEY.match(key):
            raise errors.CliError(f'invalid label key "{key}" in --label-add {item}: use '
                                  "letters, digits, '-', '_' and '.', starting and ending "
                                  "with a letter or digit (optionally prefixed by a DNS "
                                  "name and '/')")
        out[key] = value
    return out


Change = Callable[[resource.Resource], None]


def update_changes(args: argparse.Namespace) -> list[Change]:
    """What ``node update`` does to a node, as functions applied to a fresh copy."""
    adds = parse_label_add(args.label_add)
    removes = [k.strip() for k in args.label_rm]
    clash = sorted(set(adds) & set(removes))
    if clash:
        raise errors.CliError(f"label {clash[0]} is both added and removed; give one of "
                              "--label-add and --label-rm for it")
    changes: list[Change] = []
    if args.availability:
        changes.append(lambda n: n.spec.__setitem__("availability", args.availability))
    if args.role:
        changes.append(lambda n: n.spec.__setitem__("role", args.role))
    if adds:
        changes.append(lambda n: n.metadata.labels.update(adds))

    def remove(node: resource.Resource) -> None:
        for key in removes:
            if key not in node.metadata.labels:
                have = ", ".join(sorted(node.metadata.labels)) or "none"
                raise errors.CliError(f'label "{key}" is not set on node {node.name} '
                                      f"(its labels: {have}); nothing was changed")
            del node.metadata.labels[key]

    if removes:
        changes.append(remove)
    if not changes:
        raise errors.CliError("nothing to update: give --availability, --role, --label-add "
                              "or --label-rm")
    return changes


async def update_node(store: client.Store, info: kinds.KindInfo, node: resource.Resource,
                      changes: Sequence[Change]) -> bool:
    """Apply ``changes`` to ``node`` with compare-and-swap; False if nothing changed."""
    changed = False  # whether the last attempt changed anything

    def apply(obj: resource.Resource) -> None:
        nonlocal changed
        before = obj.deepcopy()
        for change in changes:
            change(obj)
        changed = obj != before

    try:
        # The agent rewrites its node's status every few seconds: re-read and redo.
        stored = await cas.mutate(store, info, node, apply, attempts=CONFLICT_ATTEMPTS,
                                  backoff=0.01)
    except store_errors.ConflictError:
        raise errors.CliError(f"gave up updating node {node.name} after {CONFLICT_ATTEMPTS} "
                              "conflicting writes; try again") from None
    if stored is None:
        await get_node(store, info, node.name)  # gone meanwhile: the not-found error
    return changed


async def run_update(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    changes = update_changes(args)
    async with common.open_store(opts) as store:
        info = _node_info(await common.registry_of(store))
        node = await get_node(store, info, args.name)
        if args.role == "worker":
            await leave_etcd(store, node.name)  # as `node demote` does
        changed = await update_node(store, info, node, changes)
    console.out(f"node/{args.name} {'updated' if changed else 'unchanged'}")
    return 0


async def leave_etcd(store: client.Store, name: str, verb: str = "demoting") -> bool:
    """Remove ``name``'s etcd member (its manager seat) if it has one and quorum allows,
    and its join endpoint from the list ``join-token`` prints; False if it had none."""
    try:
        removed = await membership.remove_manager(store.etcd, name, verb)
    except managers.QuorumError as exc:
        raise errors.CliError(f"{exc}; nothing was changed") from None
    if removed:
        await service.forget_join_addr(store.etcd, store.prefix, name)
    return removed


async def run_shortcut(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    field, value, done = SHORTCUTS[args.shortcut]

    def change(node: resource.Resource) -> None:
        node.spec[field] = value

    async with common.open_store(opts) as store:
        info = _node_info(await common.registry_of(store))
        # Resolve every name first, so a typo in the list changes nothing.
        nodes = [await get_node(store, info, name) for name in args.names]
        for node in nodes:
            if args.shortcut == "demote":
                await leave_etcd(store, node.name)
            changed = await update_node(store, info, node, [change])
            console.out(f"node/{node.name} {done}" if changed
                        else f"node/{node.name} already {done}")
    return 0
