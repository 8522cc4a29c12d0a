"""``swctl stack``: Docker's stack verbs on top of the core ones.

A stack is a namespace whose objects carry ``com.docker.stack.namespace=<stack>``; every
verb here finds them by that label, so nothing else in the namespace (and no external
object a stack file merely names) is listed or removed. Each verb reuses the core one it
stands for: ``deploy``/``convert`` are ``apply`` of converted compose files
(``stackdeploy``), ``services`` is ``service ls``, ``ps`` is ``service ps`` over the
stack's services, ``rm`` removes users before what they use (``stackobjects``). ``ls``
is the one view of its own: stacks counted from their services, as Docker counts them.
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Any, Final

from shoal.cli import common, console, converge, errors, get, printers, service, stackdeploy
from shoal.cli import stackobjects as so
from shoal.crds import selectors

LS_HEADERS: Final = ["NAME", "SERVICES", "ORCHESTRATOR"]
#: What ``docker stack ls`` shows for a stack its swarm runs; Shoal runs Swarm's model.
ORCHESTRATOR: Final = "Swarm"


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stack", parents=parents,
                       help="docker's stack verbs: deploy, ls, ps, services, rm, convert",
                       description="Deploy and manage stacks from compose files, as docker "
                                   "stack does. A stack NAME is the namespace NAME.")
    verbs = p.add_subparsers(dest="stack_verb", metavar="COMMAND", required=True)
    stackdeploy.add_parsers(verbs, parents)

    ls = verbs.add_parser("ls", aliases=["list"], parents=parents, help="list stacks",
                          description="List the stacks: NAME and how many services each has.")
    ls.set_defaults(func=run_ls, error_code=1)

    svcs = verbs.add_parser("services", parents=parents, help="list the services of a stack",
                            description="List the services of stack NAME (as service ls).")
    svcs.add_argument("stack", metavar="NAME", type=common.namespace_arg)
    get.add_output_flag(svcs)
    svcs.set_defaults(func=run_services, error_code=1)

    ps = verbs.add_parser("ps", parents=parents, help="list the tasks of a stack",
                          description="List the tasks of the services of stack NAME (as "
                                      "service ps).")
    ps.add_argument("stack", metavar="NAME", type=common.namespace_arg)
    ps.add_argument("--no-trunc", action="store_true",
                    help="do not shorten IDs, images and errors")
    ps.add_argument("-a", "--all", action="store_true",
                    help="also slots the services no longer have")
    ps.add_argument("-q", "--quiet", action="store_true", help="only print task IDs")
    ps.set_defaults(func=run_ps, error_code=1)

    rm = verbs.add_parser(
        "rm", aliases=["remove", "down"], parents=parents, help="remove stacks",
        description="Remove what the stacks made: their services, then (once the services' "
                    "tasks are gone) their secrets, configs and networks. Objects a stack "
                    "only names as external are never removed.")
    rm.add_argument("stacks", nargs="+", metavar="NAME", type=common.namespace_arg)
    rm.add_argument("-d", "--detach", action="store_true",
                    help="do not wait for the services' tasks to be gone; remove the "
                         "networks, secrets and configs at once")
    rm.add_argument("--timeout", type=converge.seconds_arg, default=converge.DEFAULT_TIMEOUT,
                    metavar="SECONDS", help="give up waiting after this long, exit 1 "
                    f"(default {converge.DEFAULT_TIMEOUT:g})")
    rm.set_defaults(func=run_rm, error_code=1)


async def run_ls(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    has_label = selectors.Selector((selectors.Requirement(so.NS_LABEL, "exists"),))
    async with common.open_store(opts) as store:
        info = (await common.registry_of(store)).lookup("services")
        services, _ = await store.list(info, None, has_label)
    counts = collections.Counter(s.metadata.labels[so.NS_LABEL] for s in services)
    rows = [[name, str(count), ORCHESTRATOR] for name, count in sorted(counts.items())]
    table, _ = printers.render_table(LS_HEADERS, rows, color=console.stdout_is_tty())
    console.out(table)
    return 0


async def run_services(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        info = (await common.registry_of(store)).lookup("services")
        found, _ = await store.list(info, args.stack, so.selector(args.stack))
    if not found:
        print(f"Nothing found in stack: {args.stack}", file=sys.stderr)
        return 0
    as_ls = argparse.Namespace(output=args.output, selector=f"{so.NS_LABEL}={args.stack}",
                               namespace=args.stack, all_namespaces=False)
    return await service.run_ls(as_ls, opts)


async def run_ps(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        services, _ = await store.list(registry.lookup("services"), args.stack,
                                       so.selector(args.stack))
        tasks, _ = await store.list(registry.lookup("tasks"), args.stack) if services else ([], 0)
    if not services:
        raise errors.CliError(f"nothing found in stack: {args.stack} (see swctl stack ls)")
    service.print_ps(sorted(services, key=lambda s: s.name), tasks, no_trunc=args.no_trunc,
                     show_all=args.all, quiet=args.quiet, what=f"stack {args.stack}")
    return 0


async def run_rm(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    wait = None if args.detach else converge.WaitOptions(timeout=args.timeout)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        for stack in dict.fromkeys(args.stacks):
            objs = await so.find(store, registry, stack)
            if not objs:
                print(f"Nothing found in stack: {stack}", file=sys.stderr)
                continue
            await so.remove(store, registry, objs, wait)
    return 0
