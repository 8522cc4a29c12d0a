"""``swctl scale``: set ``spec.replicas`` of replicated services, then wait for them.

Both spellings users know are accepted::

    swctl scale web=3 api=2                 # docker service scale
    swctl scale service/web --replicas 3    # kubectl scale
    swctl scale service web api --replicas 3

Every target is read and checked first (exists, is replicated), so a typo or a global
service in the list means nothing is written. Each write is compare-and-swap on the
version read; a conflicting writer (a concurrent apply) makes it re-read and retry, so a
scale never overwrites someone else's spec change. Then, unless ``--detach``, it waits
for convergence with the same progress as ``apply`` (see ``converge``). The command line
becomes the service's ``shoal.io/change-cause`` (a replica count makes no revision, but
the cause then says what last touched the service).
"""

from __future__ import annotations

import argparse
from typing import Any

from shoal.cli import changecause, common, console, converge, errors, get, taskview
from shoal.crds import kinds, resource
from shoal.runtime import cas
from shoal.store import client
from shoal.store import errors as store_errors

CONFLICT_ATTEMPTS = 8


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scale", parents=parents, help="set the number of replicas of services",
        description="Set the replica count of replicated services and wait for them to "
                    "converge. Targets: NAME=N (as docker service scale), or KIND/NAME "
                    "or KIND NAME... with --replicas N (as kubectl scale).",
        epilog="examples: swctl scale web=3 api=2 | swctl scale service/web --replicas 3")
    add_scale_arguments(p)


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="NAME=REPLICAS, or service/NAME, or service NAME... (with --replicas)")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="the new replica count for service/NAME targets")
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace (default: default)")
    converge.add_wait_flags(p)
    p.set_defaults(func=run, error_code=1)


def _count(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise errors.CliError(f'invalid replica count "{text}" in {where}: expected a whole '
                              "number >= 0")
    return value


def _service_kind(registry: kinds.Registry, name: str) -> kinds.KindInfo:
    info = registry.lookup(name)
    if info.kind != "Service":
        raise errors.CliError(f"cannot scale {info.plural}: only services have a replica "
                              "count (e.g. swctl scale service/web --replicas 3)")
    return info


def parse_targets(registry: kinds.Registry, targets: list[str],
                  replicas: int | None) -> list[tuple[str, int]]:
    """(service name, replicas) per target, in the order given."""
    if all("=" in t for t in targets):
        if replicas is not None:
            raise errors.CliError("--replicas cannot be combined with NAME=N targets; use "
                                  "one form or the other")
        out = []
        for target in targets:
            name, _, count = target.partition("=")
            name = name.strip()
            if "/" in name:
                _service_kind(registry, name.split("/", 1)[0])
                name = name.split("/", 1)[1]
            if not name:
                raise errors.CliError(f'"{target}" names no service: expected NAME=N')
            out.append((name, _count(count.strip(), f'"{target}"')))
        return out
    if any("=" in t for t in targets):
        raise errors.CliError("mixed NAME=N and service/NAME targets; use one form or the "
                              "other")
    if replicas is None:
        raise errors.CliError("missing --replicas N (or give targets as NAME=N, e.g. "
                              "swctl scale web=3)")
    wanted = _count(str(replicas), "--replicas")
    if all("/" in t for t in targets):
        names = []
        for target in targets:
            kind, _, name = target.partition("/")
            _service_kind(registry, kind)
            if not name:
                raise errors.CliError(f'"{target}" names no service: expected service/NAME')
            names.append(name)
        return [(n, wanted) for n in names]
    if any("/" in t for t in targets) or len(targets) < 2:
        raise errors.CliError(f'cannot tell which service "{" ".join(targets)}" means: use '
                              "service/NAME, service NAME..., or NAME=N")
    _service_kind(registry, targets[0])
    return [(n, wanted) for n in targets[1:]]


def _refuse_global(service: resource.Resource) -> errors.CliError:
    return errors.CliError(
        f"service {service.name} is global: it runs one task on every eligible node and has "
        "no replica count; change which nodes are eligible with spec.placement.constraints "
        "or node availability (swctl node drain NAME) instead")


async def scale_one(store: client.Store, info: kinds.KindInfo, service: resource.Resource,
                    replicas: int, cause: str | None = None) -> resource.Resource:
    """Write ``spec.replicas`` with compare-and-swap, re-reading after a conflict;
    ``cause`` is recorded as the change cause when the count changes."""
    def apply(obj: resource.Resource) -> None:
        if taskview.mode_of(obj) == taskview.GLOBAL:
            raise _refuse_global(obj)  # changed under us between read and write
        if obj.spec.get("replicas") != replicas:
            obj.spec["replicas"] = replicas
            changecause.mark(obj, cause)

    try:
        stored = await cas.mutate(store, info, service, apply, attempts=CONFLICT_ATTEMPTS,
                                  backoff=0.01)
    except store_errors.ConflictError:
        raise errors.CliError(f"gave up scaling {service.name} after {CONFLICT_ATTEMPTS} "
                              "conflicting writes: something keeps changing it; try again"
                              ) from None
    if stored is None:  # deleted meanwhile: the store's own not-found error
        return await store.get(info, service.name, service.namespace)
    return stored


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    wait = converge.options_from(args)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        wanted = parse_targets(registry, args.targets, args.replicas)
        info = registry.lookup("services")
        namespace = common.namespace_for(info, args.namespace) or "default"
        seen: dict[str, int] = {}
        for name, count in wanted:
            if seen.setdefault(name, count) != count:
                raise errors.CliError(f"service {name} is given two replica counts "
                                      f"({seen[name]} and {count}); give one")
        # Check every target before writing any: all or nothing, like apply.
        services = []
        for name in seen:
            try:
                service = await store.get(info, name, namespace)
            except store_errors.NotFoundError:
                raise get.not_found(info, name, namespace) from None
            if taskview.mode_of(service) == taskview.GLOBAL:
                raise _refuse_global(service)
            services.append(service)
        for service in services:
            await scale_one(store, info, service, seen[service.name], changecause.of(args))
            console.out(f"{service.name} scaled to {seen[service.name]}")
        if wait is not None:
            await converge.wait_for_services(store, [(namespace, n) for n in seen], wait)
    return 0
