"""``swctl network``: list, inspect, create and remove overlay networks, as ``docker network``.

Networks are ordinary resources (``swctl apply`` of kind Network works too); this verb
adds Docker's views of them. The allocator controller fills in what a Network was not
given (subnet, VNI, VIP block) and each hosting node's address, in ``status``; ``ls``
shows the allocated values, or ``<pending>`` until the allocator has run.

``rm`` refuses a network that is in use -- by tasks that have not ended (listed, with
their nodes) or by services that name it (they would start new tasks on it) -- the way
Docker refuses ``network rm`` of a network with endpoints. ``swctl delete network`` does
not check: it is the generic verb, for repairs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.cli import common, console, errors, pretty, printers
from shoal.crds import admission, kinds, resource, selectors
from shoal.crds import networking as nw
from shoal.crds import taskstates as ts
from shoal.store import client
from shoal.store import errors as store_errors

PENDING = "<pending>"
SCOPE = "swarm"  # what Docker prints for overlay networks
LS_HEADERS = ["NAME", "DRIVER", "SUBNET", "VNI", "SCOPE", "ATTACHABLE"]
# Users listed in a refusal before "and N more".
USERS_SHOWN = 10


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("network", parents=parents, help="list and manage networks",
                       description="List, inspect, create and remove overlay networks.")
    verbs = p.add_subparsers(dest="network_verb", metavar="COMMAND", required=True)

    ls = verbs.add_parser("ls", aliases=["list"], parents=parents, help="list networks")
    ls.add_argument("-q", "--quiet", action="store_true", help="only print network names")
    ls.set_defaults(func=run_ls, error_code=1)

    inspect = verbs.add_parser(
        "inspect", parents=parents, help="show networks, with the tasks attached",
        description="Show networks for people (subnet, gateway, VNI, options, labels, the "
                    "services on each with their VIP and the tasks attached with their "
                    "node and address), or the stored object with -o yaml|json.")
    inspect.add_argument("names", nargs="+", metavar="NAME")
    inspect.add_argument("-o", "--output", choices=("pretty", "yaml", "json"),
                         default="pretty",
                         help="pretty (the default), or the stored object as yaml or json")
    inspect.set_defaults(func=run_inspect, error_code=1)

    create = verbs.add_parser(
        "create", parents=parents, help="create an overlay network",
        description="Create an overlay network; the allocator picks a subnet (a /24 from "
                    "10.0.0.0/8) and a VNI unless given. Docker's flags; an option Shoal "
                    "cannot honour is refused with the reason, never ignored.")
    create.add_argument("name", metavar="NAME")
    create.add_argument("-d", "--driver", default="overlay",
                        help="network driver; only overlay (the default) exists in a swarm")
    create.add_argument("-o", "--opt", action="append", default=[], metavar="KEY[=VALUE]",
                        help="driver option (repeatable); Shoal honours none yet and refuses "
                             "each with the reason (e.g. encrypted)")
    create.add_argument("--subnet", help="address block, e.g. 10.0.9.0/24")
    create.add_argument("--gateway", help="gateway address inside --subnet")
    create.add_argument("--attachable", action="store_true",
                        help="let standalone workloads attach (recorded, as Docker does)")
    create.add_argument("--internal", action="store_true",
                        help="no default route out through this network")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="network label (repeatable)")
    create.set_defaults(func=run_create, error_code=1)

    rm = verbs.add_parser("rm", aliases=["remove"], parents=parents,
                          help="remove networks nothing uses")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.set_defaults(func=run_rm, error_code=1)


def _info(registry: kinds.Registry) -> kinds.KindInfo:
    return registry.lookup("networks")


# --- ls / inspect ---

def ls_rows(networks: Sequence[resource.Resource]) -> list[list[str]]:
    rows = []
    for net in sorted(networks, key=lambda n: n.name):
        info = nw.network_info(net)
        subnet = str(info.subnet) if info else str(net.spec.get("subnet") or PENDING)
        rows.append([net.name, str(net.spec.get("driver") or "overlay"), subnet,
                     str(info.vni) if info else PENDING, SCOPE,
                     "true" if net.spec.get("attachable") is True else "false"])
    return rows


async def run_ls(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        networks, _ = await store.list(_info(await common.registry_of(store)))
    if args.quiet:
        console.out("\n".join(sorted(n.name for n in networks)))
        return 0
    if not networks:
        print("No networks found (the allocator creates `ingress` once it runs; add your "
              "own with `swctl network create NAME`).", file=sys.stderr)
        return 0
    table, _ = printers.render_table(LS_HEADERS, ls_rows(networks),
                                     color=console.stdout_is_tty())
    console.out(table)
    return 0


async def get_network(store: client.Store, info: kinds.KindInfo,
                      name: str) -> resource.Resource:
    try:
        return await store.get(info, name)
    except store_errors.NotFoundError:
        pass
    networks, _ = await store.list(info)
    known = ", ".join(sorted(n.name for n in networks)) or "none"
    raise errors.CliError(f'network "{name}" not found; known networks: {known} (list them '
                          "with `swctl network ls`)")


async def run_inspect(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = _info(registry)
        found = [await get_network(store, info, name) for name in args.names]
        if args.output != "pretty":
            printers.print_inspected(found, args.output)
            return 0
        services, _ = await store.list(registry.lookup("services"))
        tasks, _ = await store.list(registry.lookup("tasks"))
    console.out("\n\n".join(pretty.network_text(n, services, tasks) for n in found))
    return 0


# --- create ---

def _labels(items: Sequence[str]) -> dict[str, str]:
    try:
        return dict(selectors.parse_label(item) for item in items)
    except ValueError as exc:
        raise errors.CliError(str(exc)) from None


def kernel_has_esp() -> bool:
    """Whether this kernel can do IPsec ESP (esp4 loaded or built in), which an encrypted
    overlay would need; read from /proc, as the cli runs where the agent does."""
    if Path("/sys/module/esp4").exists():
        return True
    try:
        with open("/proc/kallsyms") as fh:
            return any(line.rstrip().endswith((" esp_output", " esp4_rcv")) for line in fh)
    except OSError:
        return False


def refused_options(driver: str, opts: Sequence[str]) -> list[str]:
    """Why each of the driver and ``--opt`` values cannot be honoured (empty: all can)."""
    out = []
    if driver != "overlay":
        out.append(f'driver "{driver}" is not available: a Shoal network is a swarm-scoped '
                   "overlay (drop -d, or pass -d overlay)")
    for item in opts:
        key, _, _ = item.partition("=")
        if key == nw.ENCRYPTED_OPTION:
            why = ("this kernel has no IPsec ESP (esp4) either" if not kernel_has_esp()
                   else "the kernel's ESP support is not used by Shoal yet")
            out.append(f"--opt {item}: Shoal does not encrypt overlay traffic yet ({why}); "
                       "create the network without it, knowing its VXLAN traffic is "
                       "plain text")
        else:
            out.append(f"--opt {item}: {nw.driver_option_refusal(key)}")
    return out


async def run_create(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    refused = refused_options(args.driver, args.opt)
    if refused:
        raise errors.CliError([*refused, f"network {args.name} was not created"])
    spec: dict[str, Any] = {"driver": "overlay", "attachable": args.attachable,
                            "internal": args.internal}
    if args.subnet:
        spec["subnet"] = args.subnet
    if args.gateway:
        spec["gateway"] = args.gateway
    doc = {"apiVersion": "shoal.io/v1", "kind": "Network",
           "metadata": {"name": args.name, "labels": _labels(args.label)}, "spec": spec}
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        obj = admission.admit(doc, registry, "command line")
        try:
            await store.create(_info(registry), obj)
        except store_errors.AlreadyExistsError:
            raise errors.CliError(f"network {args.name} already exists (see `swctl network "
                                  f"inspect {args.name}`)") from None
    console.out(f"network/{args.name} created")
    return 0


# --- rm ---

def users_of(name: str, services: Sequence[resource.Resource],
             tasks: Sequence[resource.Resource]) -> tuple[list[str], list[str]]:
    """(tasks, services) using network ``name``: tasks attached to it that have not ended
    (``ns/task (node)``), and services that name it."""
    using_tasks = []
    for task in tasks:
        if ts.has_ended(task):
            continue
        if any(a.network == name for a in nw.task_attachments(task) or ()):
            node = ts.node_name_of(task) or "unassigned"
            using_tasks.append(f"{ts.task_key(task)} ({node})")
    using_services = [f"{s.namespace or 'default'}/{s.name}" for s in services
                      if name in nw.service_networks(s)]
    return sorted(using_tasks), sorted(using_services)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:USERS_SHOWN])
    more = len(items) - USERS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


async def run_rm(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = _info(registry)
        for name in args.names:
            await get_network(store, info, name)  # a typo changes nothing
        services, _ = await store.list(registry.lookup("services"))
        tasks, _ = await store.list(registry.lookup("tasks"))
        refusals: list[str] = []
        for name in args.names:
            using_tasks, using_services = users_of(name, services, tasks)
            if using_tasks or using_services:
                parts = []
                if using_tasks:
                    parts.append(f"{len(using_tasks)} task"
                                 f"{'s' if len(using_tasks) != 1 else ''}: "
                                 f"{_listing(using_tasks)}")
                if using_services:
                    parts.append(f"service{'s' if len(using_services) != 1 else ''} "
                                 f"{_listing(using_services)}")
                refusals.append(f"network {name} is in use by {'; and by '.join(parts)}; "
                                "remove or update those services first")
        if refusals:
            raise errors.CliError([*refusals, "nothing was removed"])
        for name in args.names:
            try:
                await store.delete(info, name)
            except store_errors.NotFoundError:
                pass  # removed meanwhile: what was asked for
            console.out(f"network/{name} removed")
    return 0
