"""A stack's objects: found by their label, removed in the order their users need.

What a stack made is what carries ``com.docker.stack.namespace=<stack>`` (the compose
converter sets it on every Service, Network, Secret and Config it makes): Services,
Secrets and Configs in the stack's namespace, Networks cluster-wide. External objects a
stack file only names never carry it, so ``stack rm`` and ``stack deploy --prune``, the
two users of this module, can never touch them.

Removal goes users first, as Docker's does: the Services, then (once their tasks are
gone, unless the caller does not wait) the Secrets, Configs and Networks. Waiting is
what makes "nothing left behind" true when the verb returns: a Service is deleted only
once the orchestrator has removed its tasks (its ``shoal.io/tasks`` finalizer), so when
the Services are gone no task uses the networks any more. A Secret, Config or Network
that a Service outside the removal still names (another stack naming it as external) is
kept and said so, rather than pulled from under that Service. Every step is a plain
delete, so running the verb again after a kill or a timeout finishes the job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Final

from shoal.cli import console, converge, errors
from shoal.compose import convert
from shoal.crds import kinds, references, resource, selectors
from shoal.store import client
from shoal.store import errors as store_errors

NS_LABEL: Final = convert.NS_LABEL
#: Removed in this order after the Services, as ``docker stack rm`` does.
USED_KINDS: Final = ("Secret", "Config", "Network")
_PLURALS: Final = {"Service": "services", "Secret": "secrets", "Config": "configs",
                   "Network": "networks"}
#: How often the wait for removed services looks again (one list call each time).
POLL: Final = 0.25


@dataclasses.dataclass(frozen=True)
class Ref:
    """One object of a stack: its kind (``Service``...), name and namespace (None for a
    Network)."""

    kind: str
    name: str
    namespace: str | None

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.kind, self.name, self.namespace)


def selector(stack: str) -> selectors.Selector:
    """Objects labelled as made by ``stack``."""
    return selectors.Selector((selectors.Requirement(NS_LABEL, "=", frozenset([stack])),))


def ref_of(obj: resource.Resource) -> Ref:
    return Ref(obj.kind, obj.name, obj.namespace)


async def find(store: client.Store, registry: kinds.Registry,
               stack: str) -> list[resource.Resource]:
    """Every object ``stack`` made: Services, Secrets, Configs, Networks, in that order."""
    out: list[resource.Resource] = []
    for kind in ("Service", *USED_KINDS):
        info = registry.lookup(_PLURALS[kind])
        namespace = stack if info.namespaced else None
        objs, _ = await store.list(info, namespace, selector(stack))
        out += sorted(objs, key=lambda o: o.name)
    return out


async def remove(store: client.Store, registry: kinds.Registry,
                 objs: Sequence[resource.Resource], wait: converge.WaitOptions | None) -> None:
    """Remove ``objs`` (objects of one or more stacks), printing ``Removing service x``
    per object; with ``wait``, the Services' tasks are gone before anything they use is
    removed, and the call returns once every Service is. Raises CliError on a timeout."""
    services = [o for o in objs if o.kind == "Service"]
    await remove_services(store, registry, services, wait)
    await remove_used(store, registry, objs, {ref_of(s).key for s in services})


async def remove_services(store: client.Store, registry: kinds.Registry,
                          services: Sequence[resource.Resource],
                          wait: converge.WaitOptions | None) -> None:
    """The first half of ``remove``: the Services, and with ``wait`` their tasks."""
    for svc in services:
        console.out(f"Removing service {svc.name}")
        await _delete(store, registry, ref_of(svc))
    if wait is not None and services:
        await _wait_gone(store, registry, [ref_of(s) for s in services], wait.timeout)


async def remove_used(store: client.Store, registry: kinds.Registry,
                      objs: Sequence[resource.Resource],
                      leaving: set[tuple[str, str, str | None]]) -> None:
    """The second half: the Secrets, Configs and Networks among ``objs`` that no stored
    Service uses, other than those ``leaving`` (being removed)."""
    if not any(o.kind in USED_KINDS for o in objs):
        return
    in_use = await _users(store, registry, leaving)
    for kind in USED_KINDS:
        for obj in (o for o in objs if o.kind == kind):
            users = in_use.get((kind.lower(), obj.name, obj.namespace))
            if users:
                print(f"Keeping {kind.lower()} {obj.name}: service "
                      f"{', '.join(sorted(users))} still uses it", file=sys.stderr)
                continue
            console.out(f"Removing {kind.lower()} {obj.name}")
            await _delete(store, registry, ref_of(obj))


async def _delete(store: client.Store, registry: kinds.Registry, ref: Ref) -> None:
    try:
        await store.delete(registry.lookup(_PLURALS[ref.kind]), ref.name, ref.namespace)
    except store_errors.NotFoundError:
        pass  # gone already (a second rm, or a controller was quicker): what we wanted


async def _users(store: client.Store, registry: kinds.Registry,
                 leaving: set[tuple[str, str, str | None]],
                 ) -> dict[tuple[str, str, str | None], list[str]]:
    """(kind, name, namespace) of every network, secret and config named by a Service
    that is not being removed -> those Services (``namespace/name``)."""
    services, _ = await store.list(registry.lookup("services"))
    return users_of(s for s in services
                    if ref_of(s).key not in leaving and not s.metadata.deletionTimestamp)


def users_of(services: Iterable[resource.Resource],
             ) -> dict[tuple[str, str, str | None], list[str]]:
    """What the given Services refer to, and who refers to it."""
    out: dict[tuple[str, str, str | None], list[str]] = {}
    for svc in services:
        for ref in references.references(svc):
            out.setdefault((ref.kind, ref.name, ref.namespace), []).append(
                f"{svc.namespace}/{svc.name}")
    return out


async def _wait_gone(store: client.Store, registry: kinds.Registry, refs: Sequence[Ref],
                     timeout: float) -> None:
    """Until none of the Services ``refs`` is stored any more. A list call per
    namespace every POLL seconds: the Services go away at the orchestrator's pace,
    nothing here needs to react faster, and a fresh read is right after any restart."""
    info = registry.lookup("services")
    namespaces = sorted({r.namespace or resource.DEFAULT_NAMESPACE for r in refs})
    wanted = {(r.namespace, r.name) for r in refs}
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    controllers_checked = False
    with console.Spinner(f"waiting for the tasks of {len(refs)} service"
                         f"{'s' if len(refs) != 1 else ''} to be removed"):
        while True:
            left = set()
            for namespace in namespaces:
                objs, _ = await store.list(info, namespace)
                left |= {(o.namespace, o.name) for o in objs} & wanted
            if not left:
                return
            now = time.monotonic()
            names = ", ".join(sorted(name for _, name in left))
            if not controllers_checked and now - start >= converge.NO_CONTROLLER_GRACE:
                controllers_checked = True
                if not await converge.controllers_running(store):
                    raise errors.CliError(
                        f"services {names} wait for their tasks to be removed, but no "
                        f"controller is running: {converge.CONTROLLER_HINT}; run this "
                        "command again once it is, to remove the rest of the stack")
            if now >= deadline:
                raise errors.CliError(
                    f"services {names} still have tasks after {timeout:g}s (see swctl "
                    "service ps NAME); run this command again later to remove the rest of "
                    "the stack")
            await asyncio.sleep(POLL)
