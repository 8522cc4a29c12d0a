"""``swctl service create|update|rollback|inspect|rm|logs``: Docker's imperative service
verbs.

They write the same Service resources as ``swctl apply``, through apply's own steps —
``admit_documents``, ``references.check``, ``check_published_ports``, ``plan_one`` and
``write`` — so a flag is held to exactly the rules a manifest is, the write is all or
nothing, and ``swctl diff -f`` of the file a service was first applied from shows what an
imperative verb changed since. The flags become a manifest in ``serviceflags`` (pure);
this module only reads the live object, hands the manifest to apply's steps, prints, and
waits for convergence with apply's progress (``overall progress: ...``, ``verify:
Service converged``) unless ``-d``.

``update`` edits the version it read: its write is compare-and-swap on that version and a
conflict makes it read again and recompute the edit (never overwrite another writer's
change, which apply's own re-plan would do, since apply's manifest is the whole truth).
``create`` never overwrites: a service that exists already, or appears meanwhile, is an
error naming ``service update``. Both record the command line as the service's change
cause when its spec changes (``changecause``; apply's ``plan_one`` decides when).

``rollback`` (and ``update --rollback``) asks the updater for the previous revision
through ``rollback`` — the same request as ``swctl rollout undo`` — and follows it as
Docker prints it: the service name, ``rollback: manually requested rollback``, the
progress, ``verify: Service converged``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
from typing import Any, Final

from shoal.cli import (
    apply,
    changecause,
    common,
    console,
    converge,
    delete,
    errors,
    get,
    logs,
    manifests,
    pretty,
    printers,
    references,
    rollback,
    serviceflags,
)
from shoal.crds import kinds, resource
from shoal.crds import updatemeta as um
from shoal.store import client
from shoal.store import errors as store_errors

CONFLICT_ATTEMPTS: Final = 8


@dataclasses.dataclass
class FlagsDocument(manifests.Document):
    """The manifest made from a command line; errors say so instead of naming a file."""

    verb: str = "create"

    @property
    def where(self) -> str:
        return f"from the flags of swctl service {self.verb}"


def add_verbs(verbs: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The sub-verbs of ``swctl service`` this module runs."""
    create = verbs.add_parser(
        "create", parents=parents, help="create a service from docker's flags",
        description="Create a service as docker service create does, then wait for it to "
                    "converge (unless -d). Writes the same Service as swctl apply.",
        epilog="example: swctl service create --name web --replicas 2 -p 8080:80 "
               "shoal/busybox httpd -f -p 80")
    serviceflags.add_create_flags(create)
    _namespace_flag(create)
    converge.add_wait_flags(create)
    create.set_defaults(func=run_create, error_code=1)

    update = verbs.add_parser(
        "update", parents=parents, help="change a service with docker's flags",
        description="Change a service as docker service update does, then wait for the "
                    "rollout (unless -d). Writes the same Service as swctl apply.",
        epilog="example: swctl service update --image shoal/busybox:2.0 web")
    serviceflags.add_update_flags(update)
    _namespace_flag(update)
    converge.add_wait_flags(update)
    update.set_defaults(func=run_update, error_code=1)

    rb = verbs.add_parser(
        "rollback", parents=parents, help="go back to a service's previous revision",
        description="Roll a service back to its previous revision as docker service "
                    "rollback does (the same as swctl rollout undo service/NAME), then "
                    "follow the rollback (unless -d).")
    rb.add_argument("name", metavar="NAME")
    _namespace_flag(rb)
    converge.add_wait_flags(rb)
    rb.set_defaults(func=run_rollback, error_code=1)

    inspect = verbs.add_parser(
        "inspect", parents=parents, help="show services in full",
        description="Show services: as stored (YAML, or -o json), or for people with "
                    "--pretty, laid out as docker service inspect --pretty.")
    inspect.add_argument("names", nargs="+", metavar="NAME")
    inspect.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    inspect.add_argument("--pretty", action="store_true", help="docker's human layout")
    _namespace_flag(inspect)
    inspect.set_defaults(func=run_inspect, error_code=1)

    rm = verbs.add_parser("rm", aliases=["remove"], parents=parents,
                          help="remove services (same as swctl delete service/NAME)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    _namespace_flag(rm)
    rm.set_defaults(func=run_rm, error_code=1)

    lg = verbs.add_parser("logs", parents=parents, help="same as swctl logs service/NAME",
                          description="The output of a service's tasks (or of one task), "
                                      "as docker service logs prints it.")
    logs.add_arguments(lg)


def _namespace_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace (default: default)")


def as_manifest(obj: resource.Resource) -> dict[str, Any]:
    """What apply owns of a live Service (spec, labels, annotations), as a manifest."""
    data = obj.to_dict()
    meta = {"name": obj.name, "namespace": obj.namespace,
            "labels": dict(obj.metadata.labels),
            "annotations": dict(obj.metadata.annotations)}
    return {"apiVersion": data.get("apiVersion", serviceflags.API_VERSION),
            "kind": "Service", "metadata": meta, "spec": data.get("spec") or {}}


def _admit(registry: kinds.Registry, doc: FlagsDocument,
           namespace: str | None) -> apply.Admitted:
    try:
        return apply.admit_documents(registry, [doc], namespace)[0]
    except errors.CliError as exc:
        # apply's summary talks about documents; here there is one command line.
        lines = [line for line in exc.lines if not line.startswith("nothing was written")]
        raise errors.CliError([*lines, f"nothing was changed: fix the flags and run "
                                       f"swctl service {doc.verb} again"]) from None


async def _check(store: client.Store, registry: kinds.Registry,
                 admitted: apply.Admitted) -> None:
    await references.check(store, registry, [admitted])
    await apply.check_published_ports(store, registry, [admitted])


async def run_create(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    wait = converge.options_from(args)
    name = args.name or serviceflags.default_name(args.image, secrets.token_hex(3)[:5])
    manifest = serviceflags.create_manifest(args, name, args.namespace, os.environ)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        admitted = _admit(registry, FlagsDocument("-", 1, manifest, verb="create"),
                          args.namespace)
        namespace = admitted.obj.namespace or resource.DEFAULT_NAMESPACE
        exists = errors.CliError(
            f"service {name} already exists in namespace {namespace}: change it with "
            f"swctl service update ... {name}, or remove it first with swctl service rm "
            f"{name}")
        if (await apply.read_live(store, [admitted]))[0] is not None:
            raise exists
        await _check(store, registry, admitted)
        try:
            await apply.write(store, [apply.plan_one(admitted, None, changecause.of(args))],
                              _report, replan=False)
        except (store_errors.ConflictError, store_errors.AlreadyExistsError):
            raise exists from None  # created by someone else since we looked
        if wait is not None:
            await converge.wait_for_services(store, [(namespace, name)], wait)
    return 0


def _report(p: apply.Planned) -> None:
    console.out(f"{p.name} {p.action}")


async def run_update(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    if args.rollback:  # Docker's spelling of service rollback
        serviceflags.refuse_mixed_rollback(args)
        return await run_rollback(args, opts)
    wait = converge.options_from(args)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = registry.lookup("services")
        namespace = common.namespace_for(info, args.namespace) or resource.DEFAULT_NAMESPACE
        changed = False
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                live = await store.get(info, args.name, namespace)
            except store_errors.NotFoundError:
                raise get.not_found(info, args.name, namespace) from None
            manifest = serviceflags.update_manifest(as_manifest(live), args, os.environ)
            # This command's own cause replaces the last one when the spec changes;
            # plan_one keeps the live one when it does not.
            manifest["metadata"]["annotations"].pop(um.CHANGE_CAUSE, None)
            admitted = _admit(registry, FlagsDocument("-", 1, manifest, verb="update"),
                              namespace)
            await _check(store, registry, admitted)
            planned = apply.plan_one(admitted, live, changecause.of(args))
            try:
                await apply.write(store, [planned], _report, replan=False)
            except store_errors.ConflictError:
                continue  # changed since we read it: edit the new version instead
            changed = planned.action != apply.UNCHANGED
            break
        else:
            raise errors.CliError(f"gave up updating {args.name} after {CONFLICT_ATTEMPTS} "
                                  "conflicting writes: something keeps changing it; try "
                                  "again")
        if wait is not None and changed:
            await converge.wait_for_services(store, [(namespace, args.name)], wait)
    return 0


async def run_rollback(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    wait = converge.options_from(args)
    async with common.open_store(opts) as store:
        info = rollback.service_info(await common.registry_of(store))
        namespace = rollback.namespace_of(info, args.namespace)
        await rollback.request(store, info, args.name, namespace, None)
        console.out(args.name)  # docker prints the service, then follows
        await rollback.follow(store, namespace, args.name, wait)
    return 0


async def run_inspect(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = registry.lookup("services")
        namespace = common.namespace_for(info, args.namespace) or resource.DEFAULT_NAMESPACE
        found = []
        for name in dict.fromkeys(args.names):
            try:
                found.append(await store.get(info, name, namespace))
            except store_errors.NotFoundError:
                raise get.not_found(info, name, namespace) from None
    if args.pretty:
        console.out("\n\n".join(pretty.service_text(s) for s in found))
    else:
        printers.print_inspected(found, args.output)
    return 0


async def run_rm(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    as_delete = argparse.Namespace(kind="service", names=list(dict.fromkeys(args.names)),
                                   filename=None, recursive=False, selector=None,
                                   namespace=args.namespace, ignore_not_found=False)
    return await delete.run(as_delete, opts)
