"""``swctl stack deploy`` and ``stack convert``: compose files through apply's own path.

``shoal.compose`` turns the ``-c`` files into Service, Network, Secret and Config
manifests for the stack (Docker's warnings go to stderr); from there a deploy is an
``apply`` of those manifests and nothing else: the same admission, reference and port
checks (``apply.admit_and_plan``), the same decision per object (an unchanged object is
not written, so deploying the same files twice writes nothing; a changed Service is
rolled by the updater per its ``updateConfig``), the same all-or-nothing write. Only
the wording is Docker's: ``Creating network web_default``, ``Creating service web_db``,
``Updating service web_db (id: ...)``, then the converge progress of the Services it
wrote, unless ``-d``.

A stack is a namespace, and a namespace in Shoal is only a name objects carry: there
is nothing to create first. ``--prune`` removes the objects labelled as made by the
stack that the files no longer describe (``stackobjects``), once the files have passed
admission (a refused deploy prunes nothing): the Services before the write, so the
ports they published are free for the new ones, the Secrets, Configs and Networks
after it, once no Service of the new files names them.

``convert`` prints the manifests a deploy would apply as a ``List`` and needs no
cluster: they are checked against the built-in kinds, as a deploy would check them
(Secrets sealed with a throwaway key, since the output is not sealed and no keyring
is needed), and printed as converted (Secret data too: they are the user's own files).
Deploy seals Secrets with the cluster keyring, as ``apply`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from shoal import compose
from shoal.cli import (
    apply,
    changecause,
    common,
    console,
    converge,
    errors,
    keyring,
    manifests,
    printers,
)
from shoal.cli import stackobjects as so
from shoal.crds import kinds, networking, resource, sealed
from shoal.store import client


@dataclasses.dataclass
class StackDocument(manifests.Document):
    """A manifest made from compose files: error messages name the object and the files
    it came from, not a document number the user never saw."""

    origin: str = ""

    @property
    def where(self) -> str:
        return self.origin


class _ThrowawayKeyring(keyring.Source):
    """A key made for one ``convert``: admission seals Secrets, and convert, which prints
    them unsealed and writes nothing, must not need the cluster's keyring for that."""

    def __init__(self) -> None:
        super().__init__(None)
        self._throwaway = sealed.Keyring.generate()

    def get(self) -> sealed.Keyring:
        return self._throwaway


def add_parsers(verbs: Any, parents: list[argparse.ArgumentParser]) -> None:
    deploy = verbs.add_parser(
        "deploy", aliases=["up"], parents=parents, help="deploy a stack from compose files",
        description="Create or update the stack NAME from compose files, as docker stack "
                    "deploy does: every object is validated first and nothing is written "
                    "if any is invalid; unchanged objects are left alone.")
    _add_compose_flags(deploy)
    deploy.add_argument("--prune", action="store_true",
                        help="remove the stack's services, networks, secrets and configs "
                             "the files no longer describe")
    converge.add_wait_flags(deploy)
    deploy.set_defaults(func=run_deploy, error_code=1)

    conv = verbs.add_parser(
        "convert", parents=parents,
        help="print the objects deploy would apply, write nothing",
        description="Print the Shoal objects `stack deploy` would apply for these compose "
                    "files, as a List; needs no cluster and writes nothing.")
    _add_compose_flags(conv)
    conv.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml",
                      help="output format (default yaml)")
    conv.set_defaults(func=run_convert, error_code=1)


def _add_compose_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--compose-file", action="append", required=True, metavar="FILE",
                   help="compose file (repeatable: later files override earlier ones)")
    p.add_argument("--allow-unencrypted", action="store_true",
                   help="deploy networks whose driver_opts ask for encryption unencrypted "
                        "(Shoal's overlay has no IPsec yet); refused without this flag")
    p.add_argument("stack", metavar="NAME", type=common.namespace_arg,
                   help="the stack's name (its namespace)")


def load(files: list[str], stack: str,
         allow_unencrypted: bool = False) -> list[manifests.Document]:
    """The manifests for ``stack`` from ``files``, Docker's warnings printed on stderr.
    A file Docker would refuse raises CliError naming the file, service and key."""
    try:
        project = compose.load_project(list(files), os.environ)
        objs = compose.convert_stack(project, stack, allow_unencrypted=allow_unencrypted)
    except compose.ComposeError as exc:
        fix = "fix the compose file and deploy again"
        if f"driver_opts.{networking.ENCRYPTED_OPTION}:" in str(exc):
            fix += " (or pass --allow-unencrypted)"
        raise errors.CliError([str(exc), f"nothing was written: {fix}"]) from None
    for warning in project.warnings:
        print(warning, file=sys.stderr)
    origin = ", ".join(files)
    return [StackDocument(source=origin, index=i, data=obj,
                          origin=f"{_what(obj, stack)} from {origin}")
            for i, obj in enumerate(objs, 1)]


def _what(obj: dict[str, Any], stack: str) -> str:
    """``service db``: the object as the compose file names it, where it can be told."""
    kind = str(obj.get("kind", "")).lower()
    name = str((obj.get("metadata") or {}).get("name", ""))
    if kind == "service":
        name = name.removeprefix(f"{stack}_")
    return f"{kind} {name}"


async def run_deploy(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    docs = load(args.compose_file, args.stack, args.allow_unencrypted)
    wait = converge.options_from(args)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        prune = await _prunable(store, registry, args.stack, docs) if args.prune else []
        dropped = [o for o in prune if o.kind == "Service"]
        planned = await apply.admit_and_plan(store, registry, docs, args.stack,
                                             changecause.of(args), keyring.Source.of(opts),
                                             {(o.namespace, o.name) for o in dropped})
        # Services the files dropped go first, as Docker prunes them, so the ports they
        # held are free for the services written next; what they used goes after the
        # write, once no service of the new files names it.
        await so.remove_services(store, registry, dropped, wait)
        changed_services: list[tuple[str, str]] = []

        def report(p: apply.Planned) -> None:
            line = progress_line(p)
            if line:
                console.out(line)
            if p.admitted.info.kind == "Service" and p.action != apply.UNCHANGED:
                changed_services.append((args.stack, p.desired.name))

        await apply.write(store, planned, report)
        await so.remove_used(store, registry, prune, {so.ref_of(o).key for o in dropped})
        if not prune and all(p.action == apply.UNCHANGED for p in planned):
            console.out(f"Stack {args.stack} is up to date: nothing to change")
        if wait is not None and changed_services:
            await converge.wait_for_services(store, changed_services, wait)
    return 0


def progress_line(p: apply.Planned) -> str | None:
    """Docker's line for one object deploy wrote; None when it was left unchanged."""
    kind = p.admitted.info.kind.lower()
    if p.action == apply.CREATED:
        return f"Creating {kind} {p.desired.name}"
    if p.action == apply.CONFIGURED:
        ident = f" (id: {p.desired.metadata.uid})" if kind == "service" else ""
        return f"Updating {kind} {p.desired.name}{ident}"
    return None


async def _prunable(store: client.Store, registry: kinds.Registry, stack: str,
                    docs: list[manifests.Document]) -> list[resource.Resource]:
    """The stack's stored objects the files no longer describe."""
    kept = set()
    for doc in docs:
        meta = doc.data.get("metadata") or {}
        kept.add((doc.data.get("kind"), meta.get("name"), meta.get("namespace")))
    return [obj for obj in await so.find(store, registry, stack)
            if so.ref_of(obj).key not in kept]


async def run_convert(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    docs = load(args.compose_file, args.stack, args.allow_unencrypted)
    # Checked as deploy would check them, against the built-in kinds: no cluster needed.
    apply.admit_documents(kinds.Registry.builtin(), docs, args.stack, _ThrowawayKeyring())
    listing = {"apiVersion": "shoal.io/v1", "kind": "List", "items": [d.data for d in docs]}
    text = printers.to_json(listing) if args.output == "json" else printers.to_yaml(listing)
    console.out(text.rstrip("\n"))
    return 0
