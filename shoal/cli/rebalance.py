"""``swctl service rebalance NAME``: even a service's tasks out over its nodes, once.

Swarm leaves a node that joins (or comes back from a drain) empty until tasks restart
for some other reason. ``service rebalance`` asks the updater for one rebalance now, even
when the service does not rebalance by itself (``spec.placement.rebalance.enabled``): it
writes the annotation ``shoal.io/rebalance-request: <now, RFC 3339>`` with
compare-and-swap (an annotation, not the spec: the request restarts nothing and is no
new revision) and, unless ``-d``, follows the updater's work until
``status.rebalance.handled`` equals that stamp, printing each move as its replacement
runs (``moved web.3 from n1 to n3``) and then the spread.

The pure half — which moves to print, when no move is in flight any more, the spread
over the eligible nodes — is ``moves_since``, ``settled`` and ``spread``, so the output
is tested without a cluster. Whether the spread is even enough is the updater's
judgement (per spread group when there are spread preferences), not recomputed here.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

from shoal.cli import common, console, converge, edits, errors, get, taskview
from shoal.controllers.updater import rebalance as rb
from shoal.crds import kinds, resource
from shoal.crds import taskstates as ts
from shoal.store import client
from shoal.store import errors as store_errors

POLL: Final = 0.5


def add_parser(verbs: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = verbs.add_parser(
        "rebalance", parents=parents,
        help="move running tasks so the service is spread evenly over its nodes",
        description="Ask for one rebalance of a replicated service: running tasks move "
                    "(start-first) from the nodes running the most of it to the ones "
                    "running the fewest, until they differ by at most "
                    "spec.placement.rebalance.maxSkew (default 1). Works whether or not "
                    "the service rebalances by itself (spec.placement.rebalance.enabled).",
        epilog="example: swctl node update --availability active n3 && "
               "swctl service rebalance web")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace (default: default)")
    p.add_argument("-d", "--detach", action="store_true",
                   help="return once the request is written, without following the moves")
    p.add_argument("--timeout", type=converge.seconds_arg, default=converge.DEFAULT_TIMEOUT,
                   metavar="SECONDS", help="give up following after this long, exit 1 "
                   f"(default {converge.DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=run, error_code=1)


# --- what to print (pure) ----------------------------------------------------------------

def moves_since(tasks: Iterable[resource.Resource], service: str,
                since: float) -> list[tuple[str, str]]:
    """(task name, ``moved web.3 from n1 to n3``) for every move replacement made at or
    after ``since`` that runs, oldest first."""
    out = []
    for task in sorted(tasks, key=lambda t: (ts.creation_time(t), t.metadata.name)):
        source = task.metadata.annotations.get(rb.MOVED_FROM)
        target = ts.node_name_of(task)
        if (source is None or target is None or ts.creation_time(task) < since
                or not ts.is_running(task)):
            continue
        out.append((task.metadata.name,
                    f"moved {service}.{ts.slot_of(task)} from {source} to {target}"))
    return out


def spread(tasks: Iterable[resource.Resource], nodes: Sequence[str]) -> dict[str, int]:
    """Running tasks desired running per node, over ``nodes`` (the eligible ones, zeros
    included) and any other node that runs some."""
    counts = dict.fromkeys(nodes, 0)
    for task in tasks:
        node = ts.node_name_of(task)
        if node is not None and ts.is_active_desired(task) and ts.is_running(task):
            counts[node] = counts.get(node, 0) + 1
    return counts


def settled(tasks: Iterable[resource.Resource], replicas: int) -> bool:
    """Exactly ``replicas`` tasks desired running, all running: no move in flight."""
    live = [t for t in tasks if ts.is_active_desired(t)]
    return len(live) == replicas and all(ts.is_running(t) for t in live)


def spread_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{node} {count}" for node, count in sorted(counts.items()))


# --- doing it ------------------------------------------------------------------------------

async def request(store: client.Store, info: kinds.KindInfo, service: resource.Resource,
                  stamp: str) -> resource.Resource:
    """Write the request annotation with compare-and-swap (re-read on a conflict)."""
    def put(obj: resource.Resource) -> None:
        if taskview.mode_of(obj) == taskview.GLOBAL:
            raise _refuse_global(obj.name)  # changed under us between read and write
        obj.metadata.annotations[rb.REQUEST] = stamp

    return await edits.edit(store, info, service, put,
                            f"asking to rebalance {service.name}")


def _refuse_global(name: str) -> errors.CliError:
    return errors.CliError(f"service {name} is global: it runs one task on every eligible "
                           "node, so there is nothing to rebalance")


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = registry.lookup("services")
        namespace = common.namespace_for(info, args.namespace) or resource.DEFAULT_NAMESPACE
        try:
            service = await store.get(info, args.name, namespace)
        except store_errors.NotFoundError:
            raise get.not_found(info, args.name, namespace) from None
        if taskview.mode_of(service) == taskview.GLOBAL:
            raise _refuse_global(service.name)
        stamp = resource.now_rfc3339()
        await request(store, info, service, stamp)
        console.out(service.name)
        if args.detach:
            return 0
        await follow(store, registry, namespace, service.name, stamp, args.timeout)
    return 0


async def follow(store: client.Store, registry: kinds.Registry, namespace: str, name: str,
                 stamp: str, timeout: float) -> None:
    """Print moves as they land until the updater has handled the request ``stamp``."""
    services, tasks_info, nodes_info = (registry.lookup("services"), registry.lookup("tasks"),
                                        registry.lookup("nodes"))
    since = ts.parse_timestamp(stamp) or 0.0
    deadline = time.monotonic() + timeout
    printed: set[str] = set()
    while True:
        try:
            service = await store.get(services, name, namespace)
        except store_errors.NotFoundError:
            raise errors.CliError(f"service {name} was deleted while it was being "
                                  "rebalanced") from None
        all_tasks, _ = await store.list(tasks_info, namespace)
        tasks = taskview.tasks_by_service(all_tasks).get((namespace, name), [])
        for task_name, line in moves_since(tasks, name, since):
            if task_name not in printed:
                printed.add(task_name)
                console.out(line)
        status = service.status.get("rebalance")
        status = status if isinstance(status, dict) else {}
        if status.get("handled") == stamp and settled(tasks, taskview.replicas_of(service)):
            # Done as the updater judges it (with spread preferences, per spread group),
            # and the last move's old task has stopped: the spread as it now runs.
            nodes, _ = await store.list(nodes_info)
            placement = service.spec.get("placement")
            eligible = [c.name for c in rb.candidates(placement, nodes)[0]]
            counts = spread(tasks, eligible)
            config, _ = rb.Config.from_spec(placement)
            note = (f": {status['message']}" if status.get("message")
                    else f" (maxSkew {config.max_skew})")
            console.out(f"verify: spread {spread_text(counts)}{note}")
            return
        if time.monotonic() > deadline:
            raise errors.CliError(
                f"timed out after {timeout:g}s waiting for service {name} to be rebalanced "
                f"({status.get('message') or 'no answer from the updater yet'}); is the "
                "controller-manager running? (swctl up)")
        await asyncio.sleep(POLL)
