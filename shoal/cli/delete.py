"""``swctl delete KIND NAME...`` (or ``KIND/NAME...``) and ``swctl delete -f FILE``.

Deletion honours finalizers, as the store does: an object with finalizers only gets a
``deletionTimestamp`` and stays until the controllers owning them let go, and the output
says so (``... deletion requested (waiting for finalizers: x)``) rather than claiming it
is gone. Every named object is attempted even if an earlier one fails, then the command
fails if any did (so ``delete svc a b`` with ``a`` missing still deletes ``b``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shoal.cli import apply, common, console, errors, get, manifests
from shoal.crds import kinds, resource
from shoal.store import client
from shoal.store import errors as store_errors


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "delete", parents=parents, help="delete objects by name, selector or manifest",
        description="Delete KIND NAME..., every object of KIND matching -l, or the objects "
                    "named in manifests with -f.")
    p.add_argument("kind", metavar="KIND", nargs="?")
    p.add_argument("names", metavar="NAME", nargs="*")
    apply.add_file_flags(p, required=False)
    p.add_argument("-l", "--selector", metavar="SELECTOR",
                   help="delete every object of KIND whose labels match")
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace (default: default)")
    p.add_argument("--ignore-not-found", action="store_true",
                   help="treat objects that do not exist as deleted")
    p.set_defaults(func=run, error_code=1)


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    if args.kind:
        args.kind, args.names = common.split_refs(args.kind, list(args.names))
    if args.filename and (args.kind or args.selector):
        raise errors.CliError("give either -f FILE or KIND NAME..., not both")
    if not args.filename and not args.kind:
        raise errors.CliError("say what to delete: swctl delete KIND NAME..., "
                              "swctl delete KIND -l SELECTOR, or swctl delete -f FILE")
    if args.kind and not args.names and not args.selector:
        raise errors.CliError(f"no names given: swctl delete {args.kind} NAME... "
                              "(or -l SELECTOR to delete by label)")
    docs = manifests.load(args.filename, args.recursive) if args.filename else []
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        targets = (_targets_from_manifests(registry, docs, args.namespace) if docs
                   else await _targets_from_args(store, registry, args))
        failures = []
        for info, name, namespace in targets:
            try:
                console.out(await delete_one(store, info, name, namespace))
            except store_errors.NotFoundError:
                if not args.ignore_not_found:
                    failures.append(f"{common.key_ref(info, name, namespace)} not found "
                                    "(use --ignore-not-found to accept that)")
    if failures:
        raise errors.CliError(failures)
    return 0


async def _targets_from_args(store: client.Store, registry: kinds.Registry,
                             args: argparse.Namespace,
                             ) -> list[tuple[kinds.KindInfo, str, str | None]]:
    info = registry.lookup(args.kind)
    namespace = common.namespace_for(info, args.namespace)
    names = list(args.names)
    if args.selector:
        objs, _ = await store.list(info, namespace, get.parse_selector(args.selector))
        names += [o.name for o in objs if o.name not in names]
        if not names:
            # Matching nothing is not an error (kubectl agrees); say so for people.
            scope = f" in {namespace} namespace" if namespace else ""
            print(f"No resources found{scope}.", file=sys.stderr)
    return [(info, name, namespace) for name in names]


def _targets_from_manifests(registry: kinds.Registry, docs: list[manifests.Document],
                            namespace: str | None,
                            ) -> list[tuple[kinds.KindInfo, str, str | None]]:
    """Kind, name and namespace of every document; no full validation is needed to
    delete, but each document must say which object it is."""
    out = []
    problems = []
    for doc in docs:
        meta = doc.data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        try:
            info = registry.lookup(str(doc.data.get("kind", "")))
        except kinds.UnknownKindError as exc:
            problems.append(f"kind: {exc} ({doc.where})")
            continue
        if not isinstance(name, str) or not name:
            problems.append(f"metadata.name: required to delete an object ({doc.where})")
            continue
        ns = (meta or {}).get("namespace") or namespace
        out.append((info, name, common.namespace_for(info, ns)))
    if problems:
        raise errors.CliError(problems)
    return sorted(out, key=lambda t: _delete_rank(t[0]))


#: Kinds that other objects refer to (a Service names its networks, secrets and
#: configs): deleted after the objects in the same files that use them, so that a
#: service's tasks are told to stop before the network they sit on is taken away.
_REFERENCED_KINDS = frozenset({"Network", "Secret", "Config"})


def _delete_rank(info: kinds.KindInfo) -> int:
    """Order of deletion for ``delete -f``: users first, then what they use, CRDs last
    (objects of a kind defined in the same file are deleted while their kind is still
    registered, instead of being orphaned in etcd). Stable: file order otherwise."""
    if info.kind == kinds.CRD_KIND:
        return 2
    return 1 if info.kind in _REFERENCED_KINDS else 0


async def delete_one(store: client.Store, info: kinds.KindInfo, name: str,
                     namespace: str | None) -> str:
    """Delete one object; the line to print about it."""
    left: resource.Resource | None = await store.delete(info, name, namespace)
    ref = f"{info.kind.lower()}/{name}"
    if left is not None:
        return (f"{ref} deletion requested (waiting for finalizers: "
                f"{', '.join(left.metadata.finalizers)})")
    return f"{ref} deleted"
