"""``swctl secret`` and ``swctl config``: create, ls, inspect, update, rm, as ``docker secret``.

Both kinds are ordinary resources (``apply`` of a Secret or Config works too); these verbs
are Docker's views of them, one table of verbs for both (``KINDS``). Writes go through
``apply``'s own admission, sealing, planning and compare-and-swap write, so a secret
made here is sealed like one applied from a file and ``update`` is "unchanged" when the
value is the same.

* ``create NAME FILE|-`` makes one (refused if it exists: values change with
  ``update``); ``--label`` as Docker's.
* ``ls`` -- ID, NAME, DIGEST, CREATED, UPDATED (Docker's columns, and the digest that
  tells two values apart, cut to 12 hex digits unless ``--no-trunc``); ``-q`` names only.
* ``inspect NAME...`` -- the object as JSON without its value (Docker's default), or
  ``--pretty``; a config's ``--pretty`` shows its data, as Docker's does.
* ``update NAME FILE|-`` -- Shoal's addition: a new value, which the rotation
  controller rolls out to the services that mount it (``controllers/rotation``). Swarm's
  secrets are immutable; here the value changes in place and ``UPDATED`` says when
  (``secretdata.UPDATED_AT``, set by ``apply`` whenever the value changes).
* ``rm NAME...`` -- refused, with Docker's message, while a service mounts it (its next
  task could not start); every name is checked before anything is removed.
* ``secret rotate-key`` -- see ``rotatekey``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from shoal.cli import (
    apply,
    common,
    console,
    errors,
    keyring,
    manifests,
    pretty,
    printers,
    redact,
    rotatekey,
)
from shoal.crds import kinds, mountdigests, resource, secretdata, selectors
from shoal.store import client
from shoal.store import errors as store_errors

LS_HEADERS: Final = ["ID", "NAME", "DIGEST", "CREATED", "UPDATED"]
CONFLICT_ATTEMPTS: Final = 8


@dataclasses.dataclass(frozen=True)
class ValueKind:
    """What differs between ``secret`` and ``config``."""

    verb: str  # secret | config
    kind: str  # Secret | Config
    plural: str

    def encode(self, raw: bytes, name: str) -> str:
        """``spec.data`` for ``raw``: base64 for a secret, text for a config."""
        if self.kind == "Secret":
            return base64.b64encode(raw).decode()
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise errors.CliError(f"config {name}: the data is not UTF-8 text; a config "
                                  "holds text (put binary data in a secret)") from None


KINDS: Final = {"secret": ValueKind("secret", "Secret", "secrets"),
                "config": ValueKind("config", "Config", "configs")}


@dataclasses.dataclass
class _VerbDocument(manifests.Document):
    """A manifest made from a command line; errors say so instead of naming a file."""

    verb: str = ""

    @property
    def where(self) -> str:
        return f"from swctl {self.verb}"


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    for vk in KINDS.values():
        _add_kind(sub, parents, vk)


def _add_kind(sub: Any, parents: list[argparse.ArgumentParser], vk: ValueKind) -> None:
    p = sub.add_parser(vk.verb, parents=parents, help=f"manage {vk.plural}",
                       description=f"Create, list, inspect, update and remove {vk.plural}.")
    dest = f"{vk.verb}_verb"
    verbs = p.add_subparsers(dest=dest, metavar="COMMAND", required=True)

    def ns(q: argparse.ArgumentParser) -> None:
        q.add_argument("-n", "--namespace", type=common.namespace_arg,
                       help="namespace (a stack's name; default: default)")
        q.set_defaults(value_kind=vk, error_code=1)

    what = "the secret's bytes" if vk.kind == "Secret" else "the config's text"
    create = verbs.add_parser("create", parents=parents, help=f"create a {vk.verb}",
                              description=f"Create a {vk.verb} from FILE, or - for stdin.")
    create.add_argument("name", metavar="NAME")
    create.add_argument("file", metavar="FILE|-", help=f"where to read {what}")
    create.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE",
                        help=f"{vk.verb} label (repeatable)")
    ns(create)
    create.set_defaults(func=run_create)

    ls = verbs.add_parser("ls", aliases=["list"], parents=parents, help=f"list {vk.plural}")
    ls.add_argument("-q", "--quiet", action="store_true", help="only print names")
    ls.add_argument("--no-trunc", action="store_true", help="print whole digests")
    ls.add_argument("-A", "--all-namespaces", action="store_true",
                    help="list every namespace's")
    ns(ls)
    ls.set_defaults(func=run_ls)

    inspect = verbs.add_parser(
        "inspect", parents=parents, help=f"show {vk.plural} (never a secret's value)",
        description=f"Show {vk.plural} as JSON (the value as its size and digest), or "
                    "for people with --pretty" + (" (with the data)." if vk.kind == "Config"
                                                  else "."))
    inspect.add_argument("names", nargs="+", metavar="NAME")
    inspect.add_argument("--pretty", action="store_true", help="human-readable output")
    ns(inspect)
    inspect.set_defaults(func=run_inspect)

    update = verbs.add_parser(
        "update", parents=parents, help=f"give a {vk.verb} a new value",
        description=f"Replace the value of a {vk.verb} with FILE (or - for stdin). The "
                    "services that mount it roll through their updateConfig so every task "
                    "gets the new value (Shoal's addition: Swarm cannot update them).")
    update.add_argument("name", metavar="NAME")
    update.add_argument("file", metavar="FILE|-", help=f"where to read {what}")
    ns(update)
    update.set_defaults(func=run_update)

    rm = verbs.add_parser("rm", aliases=["remove"], parents=parents,
                          help=f"remove {vk.plural} no service uses")
    rm.add_argument("names", nargs="+", metavar="NAME")
    ns(rm)
    rm.set_defaults(func=run_rm)

    if vk.kind == "Secret":
        rotatekey.add_parser(verbs, parents)


def _namespace(args: argparse.Namespace) -> str:
    return str(args.namespace or resource.DEFAULT_NAMESPACE)


def _read(path: str, vk: ValueKind, name: str) -> bytes:
    try:
        raw = sys.stdin.buffer.read() if path == manifests.STDIN else Path(path).read_bytes()
    except OSError as exc:
        raise errors.CliError(f"cannot read {path}: {exc.strerror}") from None
    if not raw:
        raise errors.CliError(f"{vk.verb} {name}: {path} is empty; a {vk.verb} holds at "
                              "least one byte")
    return raw


def _labels(items: Sequence[str]) -> dict[str, str]:
    try:
        return dict(selectors.parse_label(item) for item in items)
    except ValueError as exc:
        raise errors.CliError(str(exc)) from None


def _admit(registry: kinds.Registry, args: argparse.Namespace, verb: str, raw: bytes,
           labels: dict[str, str], annotations: dict[str, str],
           ring: keyring.Source) -> apply.Admitted:
    vk: ValueKind = args.value_kind
    manifest = {"apiVersion": "shoal.io/v1", "kind": vk.kind,
                "metadata": {"name": args.name, "namespace": _namespace(args),
                             "labels": labels, "annotations": annotations},
                "spec": {"data": vk.encode(raw, args.name)}}
    doc = _VerbDocument("-", 1, manifest, verb=f"{vk.verb} {verb}")
    return apply.admit_documents(registry, [doc], None, ring)[0]


def not_found(vk: ValueKind, name: str, namespace: str) -> errors.CliError:
    return errors.CliError(f'{vk.verb} "{name}" not found in namespace "{namespace}" (list '
                           f"them with `swctl {vk.verb} ls -n {namespace}`)")


# --- create / update ---

async def run_create(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    vk: ValueKind = args.value_kind
    raw = _read(args.file, vk, args.name)
    ring = keyring.Source.of(opts)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        admitted = _admit(registry, args, "create", raw, _labels(args.label), {}, ring)
        try:
            await store.create(admitted.info, admitted.obj)
        except store_errors.AlreadyExistsError:
            raise errors.CliError(
                f'{vk.verb} "{args.name}" already exists in namespace "{_namespace(args)}"; '
                f"give it a new value with `swctl {vk.verb} update {args.name} FILE`") from None
    console.out(f"{vk.verb}/{args.name} created")
    return 0


async def run_update(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    vk: ValueKind = args.value_kind
    raw = _read(args.file, vk, args.name)
    ring = keyring.Source.of(opts)
    namespace = _namespace(args)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = registry.lookup(vk.plural)
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                live = await store.get(info, args.name, namespace)
            except store_errors.NotFoundError:
                raise errors.CliError(
                    f'{vk.verb} "{args.name}" not found in namespace "{namespace}"; make it '
                    f"with `swctl {vk.verb} create {args.name} FILE`") from None
            admitted = _admit(registry, args, "update", raw, dict(live.metadata.labels),
                              dict(live.metadata.annotations), ring)
            planned = apply.plan_one(admitted, live)
            try:
                await apply.write(store, [planned], lambda p: None, replan=False)
            except store_errors.ConflictError:
                continue  # changed since we read it: decide again from the new version
            break
        else:
            raise errors.CliError(f"gave up updating {vk.verb} {args.name}: other writers "
                                  "keep changing it; try again")
        users = _users(args.name, vk, (await store.list(registry.lookup("services"),
                                                        namespace))[0])
    console.out(f"{vk.verb}/{args.name} {planned.action}")
    if planned.action == apply.CONFIGURED and users:
        console.out(f"rolling the service{'s' if len(users) != 1 else ''} that mount it: "
                    f"{', '.join(users)} (follow with `swctl service ps NAME`)")
    return 0


# --- ls / inspect ---

def short_id(obj: resource.Resource) -> str:
    """Docker shows a 25-character ID; the uid without dashes, cut to that."""
    return (obj.metadata.uid or "").replace("-", "")[:25] or printers.NONE


#: Hex digits of a digest ``ls`` shows (as Docker cuts IDs); ``--no-trunc`` shows all.
DIGEST_SHOWN: Final = 12


def short_digest(digest: str | None) -> str:
    if not digest:
        return printers.NONE
    algorithm, _, hexdigits = digest.partition(":")
    return f"{algorithm}:{hexdigits[:DIGEST_SHOWN]}"


def ls_rows(objs: Sequence[resource.Resource], namespaces: bool,
            no_trunc: bool = False) -> list[list[str]]:
    rows = []
    for obj in sorted(objs, key=lambda o: (o.namespace or "", o.name)):
        created = obj.metadata.creationTimestamp
        updated = obj.metadata.annotations.get(secretdata.UPDATED_AT) or created
        name = f"{obj.namespace}/{obj.name}" if namespaces else obj.name
        digest = secretdata.digest(obj)
        rows.append([short_id(obj), name,
                     (digest or printers.NONE) if no_trunc else short_digest(digest),
                     _ago(created), _ago(updated)])
    return rows


def _ago(stamp: str | None) -> str:
    return f"{printers.age(stamp)} ago" if stamp and printers.parse_time(stamp) else (
        printers.NONE)


async def run_ls(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    vk: ValueKind = args.value_kind
    namespace = None if args.all_namespaces else _namespace(args)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        objs, _ = await store.list(registry.lookup(vk.plural), namespace)
    if args.quiet:
        if objs:
            console.out("\n".join(sorted(o.name for o in objs)))
        return 0
    if not objs:
        where = "" if namespace is None else f" in namespace {namespace}"
        print(f"No {vk.plural} found{where} (make one with `swctl {vk.verb} create NAME "
              "FILE`).", file=sys.stderr)
        return 0
    table, _ = printers.render_table(LS_HEADERS, ls_rows(objs, namespace is None, args.no_trunc),
                                     color=console.stdout_is_tty())
    console.out(table)
    return 0


def pretty_text(obj: resource.Resource) -> str:
    """Docker's ``--pretty``: a config's data is shown, a secret's never."""
    created = obj.metadata.creationTimestamp
    updated = obj.metadata.annotations.get(secretdata.UPDATED_AT) or created
    lines = [_field("ID", short_id(obj)), _field("Name", obj.name),
             _field("Namespace", obj.namespace or resource.DEFAULT_NAMESPACE)]
    if obj.metadata.labels:
        lines.append("Labels:")
        lines += [f" - {k}={v}" for k, v in sorted(obj.metadata.labels.items())]
    lines += [_field("Created at", pretty.human_date(created)),
              _field("Updated at", pretty.human_date(updated)),
              _field("Size", pretty.human_bytes(secretdata.size(obj))),
              _field("Digest", secretdata.digest(obj) or printers.NONE)]
    if obj.kind == "Config":
        lines += ["Data:", str(obj.spec.get("data", ""))]
    return "\n".join(lines)


def _field(label: str, value: object) -> str:
    return f"{label + ':':<17}{value}"  # docker's column for secret/config --pretty


async def run_inspect(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    vk: ValueKind = args.value_kind
    namespace = _namespace(args)
    async with common.open_store(opts) as store:
        info = (await common.registry_of(store)).lookup(vk.plural)
        found = []
        for name in args.names:
            try:
                found.append(await store.get(info, name, namespace))
            except store_errors.NotFoundError:
                raise not_found(vk, name, namespace) from None
    if args.pretty:
        console.out("\n\n".join(pretty_text(o) for o in found))
    else:
        console.out(printers.to_json([o.to_dict() for o in redact.for_output(found)]))
    return 0


# --- rm ---

def _users(name: str, vk: ValueKind, services: Sequence[resource.Resource]) -> list[str]:
    key = mountdigests.key(vk.verb, name)
    return sorted(s.name for s in services if key in mountdigests.mounted(s))


def in_use_message(vk: ValueKind, name: str, users: list[str]) -> str:
    """Swarm's words (swarmkit's controlapi), so scripts and searches match."""
    plural = "s" if len(users) > 1 else ""
    return (f"{vk.verb} '{name}' is in use by the following service{plural}: "
            f"{', '.join(users)}")


async def run_rm(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    vk: ValueKind = args.value_kind
    namespace = _namespace(args)
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        info = registry.lookup(vk.plural)
        for name in args.names:
            await _must_exist(store, info, vk, name, namespace)  # a typo changes nothing
        services, _ = await store.list(registry.lookup("services"), namespace)
        refusals = [in_use_message(vk, name, users) for name in args.names
                    if (users := _users(name, vk, services))]
        if refusals:
            raise errors.CliError([*refusals, "nothing was removed: remove the "
                                   f"{vk.verb} from those services first"])
        for name in args.names:
            try:
                await store.delete(info, name, namespace)
            except store_errors.NotFoundError:
                pass  # removed meanwhile: what was asked for
            console.out(name)  # Docker prints each removed name
    return 0


async def _must_exist(store: client.Store, info: kinds.KindInfo, vk: ValueKind, name: str,
                      namespace: str) -> None:
    try:
        await store.get(info, name, namespace)
    except store_errors.NotFoundError:
        raise not_found(vk, name, namespace) from None
