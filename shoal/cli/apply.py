"""``swctl apply -f``: admit every document, then write them all or nothing.

Three steps, each of which ``diff`` and ``--dry-run`` reuse:

1. **admit** every document with ``admission.admit`` before touching etcd. CRDs in the
   same apply are admitted first and registered in this run's registry, so a file that
   defines a kind and objects of that kind applies in one go. Any invalid document means
   every error is printed and nothing is written (exit 1). Services are also checked
   for the networks, secrets and configs they name and Networks for subnet overlaps
   (``references``), and against the published ports other services hold
   (``check_published_ports``).
2. **plan**: read the live objects and decide per object: ``created`` (absent),
   ``unchanged`` (spec, labels and annotations equal after defaults) or ``configured``
   (the live object with the manifest's spec, labels and annotations; status, finalizers,
   owner references and uid are kept, because controllers own them). The update
   lifecycle's annotations (``updatemeta.MANAGED_ANNOTATIONS``: change cause, rollback
   and resume requests), the rotation controller's ``shoal.io/mounted-digests`` and
   ``spec.forceUpdate`` are written by other verbs and controllers, so a manifest that
   does not name them keeps their live values; a Secret or Config whose value changes
   gets ``shoal.io/updated-at`` (``secret ls``'s UPDATED). A Secret is sealed at admission
   (``secretdata``: etcd never holds ``spec.data``) and compared by digest, since two
   sealings of one value differ. A Service whose spec changes gets the
   command line as its ``shoal.io/change-cause`` (``changecause``), unless the manifest
   sets one; an unchanged one keeps its old cause and stays ``unchanged``.
3. **write** the changes in one etcd transaction when they fit (127 operations), in
   chunks otherwise. Updates are compare-and-swap on the version read in step 2; a
   conflict (someone else wrote meanwhile) re-plans the chunk and tries again.

Then, unless ``--detach`` (or ``--dry-run``), apply waits for the Services it created or
configured to converge and shows their progress (``converge``), as ``docker service
create`` does; a service that cannot converge makes apply exit 1 with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

from shoal.cli import (
    changecause,
    common,
    console,
    converge,
    errors,
    keyring,
    manifests,
    references,
)
from shoal.crds import admission, kinds, mountdigests, networking, resource, secretdata
from shoal.crds import updatemeta as um
from shoal.store import client
from shoal.store import errors as store_errors

# One operation of etcd's 128 per transaction is left free, so a caller could add a
# fence or guard comparison without re-chunking.
MAX_WRITES_PER_TXN = client.MAX_TXN_OPS - 1
CONFLICT_ATTEMPTS = 8
# Above this many objects of one kind and namespace, one list beats a get per object.
LIST_THRESHOLD = 32
READ_CONCURRENCY = 64

CREATED = "created"
CONFIGURED = "configured"
UNCHANGED = "unchanged"


@dataclasses.dataclass
class Admitted:
    """A validated document: the object as apply wants it, and where it came from."""

    doc: manifests.Document
    info: kinds.KindInfo
    obj: resource.Resource

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.info.kind, self.obj.namespace, self.obj.name)


@dataclasses.dataclass
class Planned:
    """What apply does with one object: ``action``, and the object it would write."""

    admitted: Admitted
    live: resource.Resource | None
    desired: resource.Resource
    action: str
    #: The command line recorded as a Service's change cause (kept for a re-plan).
    change_cause: str | None = None

    @property
    def name(self) -> str:
        return common.ref_of(self.admitted.info, self.desired)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "apply", parents=parents, help="create or update objects from manifests",
        description="Create or update the objects in FILE|DIR|- . Every document is "
                    "validated first; if any is invalid nothing is written.")
    add_file_flags(p)
    p.add_argument("--dry-run", nargs="?", const="client", choices=["client", "none"],
                   default="none", help="validate and show what would change, write nothing")
    p.add_argument("-n", "--namespace", type=common.namespace_arg,
                   help="namespace for objects that do not name one (default: default)")
    converge.add_wait_flags(p)
    p.set_defaults(func=run, error_code=1)


def add_file_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-f", "--filename", action="append", required=required, default=None,
                   metavar="FILE|DIR|-", help="manifest file, directory, or - for stdin "
                   "(repeatable)")
    p.add_argument("-R", "--recursive", action="store_true",
                   help="with a directory, include its subdirectories")


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    docs = manifests.load(args.filename, args.recursive)
    dry_run = args.dry_run != "none"
    async with common.open_store(opts) as store:
        registry = await common.registry_of(store)
        planned = await admit_and_plan(store, registry, docs, args.namespace,
                                       changecause.of(args), keyring.Source.of(opts))
        suffix = " (dry run)" if dry_run else ""
        changed_services: list[tuple[str, str]] = []

        def report(p: Planned) -> None:
            console.out(f"{p.name} {p.action}{suffix}")
            if p.admitted.info.kind == "Service" and p.action != UNCHANGED:
                changed_services.append((p.desired.namespace or resource.DEFAULT_NAMESPACE,
                                         p.desired.name))

        if dry_run:
            for p in planned:
                report(p)
        else:
            await write(store, planned, report)
            wait = converge.options_from(args)
            if wait is not None and changed_services:
                await converge.wait_for_services(store, changed_services, wait)
    return 0


async def admit_and_plan(store: client.Store, registry: kinds.Registry,
                         docs: Sequence[manifests.Document], namespace: str | None,
                         change_cause: str | None, ring: keyring.Source,
                         leaving: Collection[tuple[str | None, str]] = ()) -> list[Planned]:
    """Steps 1 and 2 for ``docs``: admit every one (and check what they refer to and the
    ports they publish against the store), then decide per object; raises CliError with
    every problem, having written nothing. ``apply`` and ``stack deploy`` share it, so a
    stack is admitted exactly as the same manifests would be. ``ring`` seals Secrets;
    ``leaving``: (namespace, name) of stored Services the caller removes before writing,
    whose ports are free."""
    admitted = admit_documents(registry, docs, namespace, ring)
    await references.check(store, registry, admitted)
    await check_published_ports(store, registry, admitted, leaving)
    with console.Spinner("reading live objects"):
        return await plan(store, admitted, change_cause)


# --- 1. admission ---

def admit_documents(registry: kinds.Registry, docs: Sequence[manifests.Document],
                    namespace: str | None = None, ring: keyring.Source | None = None,
                    ) -> list[Admitted]:
    """Admit every document or raise one CliError listing every problem, in file order.

    ``registry`` gains the kinds defined by CRDs among ``docs``. Secrets come back
    sealed with ``ring`` (default: ``$SHOAL_KEYRING`` or ``swctl up``'s), which is read
    only when there is a Secret to seal.
    """
    plaintexts: dict[int, bytes] = {}
    crd_names = set(registry.lookup(kinds.CRD_KIND).names)
    is_crd = [str(d.data.get("kind", "")).lower() in crd_names for d in docs]
    order = [i for i, c in enumerate(is_crd) if c] + [i for i, c in enumerate(is_crd) if not c]
    problems: dict[int, list[str]] = {}
    admitted: dict[int, Admitted] = {}
    for i in order:
        doc = docs[i]
        try:
            data = _with_namespace(doc, namespace, registry)
            obj = admission.admit(data, registry, doc.where)
            info = registry.by_kind(obj.kind)
            if info.kind == kinds.CRD_KIND:
                # Later documents of this apply may be objects of the kind it defines.
                registry.add(kinds.kind_info_from_crd(obj.to_dict()))
        except admission.ValidationError as exc:
            problems[i] = [line for line in str(exc).splitlines() if line]
        except (errors.CliError, ValueError) as exc:
            problems[i] = [f"{exc} ({doc.where})"]
        else:
            admitted[i] = Admitted(doc, info, _as_applied(info, obj))
            if info.kind == "Secret":
                try:
                    plaintexts[i] = secretdata.manifest_bytes(obj.spec, doc.where)
                except ValueError as exc:
                    problems[i] = [str(exc)]
    seen: dict[tuple[str, str | None, str], Admitted] = {}
    for i in sorted(admitted):
        adm = admitted[i]
        first = seen.setdefault(adm.key, adm)
        if first is not adm:
            ref = common.key_ref(adm.info, adm.obj.name, adm.obj.namespace)
            problems.setdefault(i, []).append(
                f"{ref} is defined twice ({first.doc.where} and {adm.doc.where}); "
                "keep one of them")
    if problems:
        lines = [line for i in sorted(problems) for line in problems[i]]
        invalid = len(problems)
        lines.append(f"nothing was written: {invalid} of {len(docs)} "
                     f"document{'s' if len(docs) != 1 else ''} "
                     f"{'is' if invalid == 1 else 'are'} invalid; fix "
                     f"{'it' if invalid == 1 else 'them'} and apply again")
        raise errors.CliError(lines)
    if plaintexts:
        source = ring or keyring.Source(None)
        for i, plaintext in plaintexts.items():
            obj = admitted[i].obj
            obj.spec = secretdata.sealed_spec(
                source.get(), plaintext, obj.namespace or resource.DEFAULT_NAMESPACE,
                obj.name)
    return [admitted[i] for i in sorted(admitted)]


async def check_published_ports(store: client.Store, registry: kinds.Registry,
                                admitted: Sequence[Admitted],
                                leaving: Collection[tuple[str | None, str]] = ()) -> None:
    """Refuse Services publishing a port another service holds, naming the holder
    (the allocator would refuse it too, but only after the write, in a condition).
    Services ``leaving`` ((namespace, name), removed before the write) hold nothing."""
    services = [a for a in admitted if a.info.kind == "Service"]
    if not any(networking.spec_ports(a.obj) for a in services):
        return
    live, _ = await store.list(registry.lookup("services"))
    live = [s for s in live if (s.namespace, s.name) not in leaving]
    conflicts = networking.port_conflicts([a.obj for a in services], live)
    if not conflicts:
        return
    where = {id(a.obj): a for a in services}
    lines = []
    for svc, index, message in conflicts:
        adm = where[id(svc)]
        ref = common.key_ref(adm.info, svc.name, svc.namespace)
        lines.append(f"spec.endpoint.ports[{index}].published: {message} "
                     f"({ref}, {adm.doc.where})")
    lines.append("nothing was written: free the port or publish another one")
    raise errors.CliError(lines)


def _with_namespace(doc: manifests.Document, namespace: str | None,
                    registry: kinds.Registry) -> dict[str, Any]:
    """The document with ``-n`` filled in, refusing a manifest that names another one."""
    data = doc.data
    if not namespace:
        return data
    try:
        info = registry.lookup(str(data.get("kind", "")))
    except kinds.UnknownKindError:
        return data  # admission reports the unknown kind with its suggestions
    meta = data.get("metadata")
    if not info.namespaced or not isinstance(meta, dict):
        return data
    given = meta.get("namespace")
    if given and given != namespace:
        raise errors.CliError(
            f'the object\'s namespace "{given}" does not match -n {namespace}; remove '
            "metadata.namespace from the manifest or pass -n " + str(given))
    data = dict(data)
    data["metadata"] = {**meta, "namespace": namespace}
    return data


def _as_applied(info: kinds.KindInfo, obj: resource.Resource) -> resource.Resource:
    """Only what a manifest may set: server-owned fields (uid, resourceVersion,
    timestamps, generation, status) are dropped, so re-applying ``get -o yaml`` output
    is safe and cannot forge identity or status."""
    meta = resource.ObjectMeta(
        name=obj.name, namespace=common.namespace_for(info, obj.namespace),
        labels=dict(obj.metadata.labels), annotations=dict(obj.metadata.annotations),
        finalizers=list(obj.metadata.finalizers),
        ownerReferences=copy.deepcopy(obj.metadata.ownerReferences))
    return resource.Resource(kind=info.kind, metadata=meta, spec=copy.deepcopy(obj.spec),
                             apiVersion=info.api_version)


# --- 2. plan ---

def _annotations(adm: Admitted, live: resource.Resource | None,
                 change_cause: str | None) -> dict[str, str]:
    """The annotations to write: the manifest's, the live managed ones it does not
    name, and the change cause when a Service's spec changes."""
    out = dict(adm.obj.metadata.annotations)
    if adm.info.kind in ("Secret", "Config") and live is not None:
        if secretdata.digest(live) != secretdata.digest(adm.obj):
            out[secretdata.UPDATED_AT] = resource.now_rfc3339()
        elif secretdata.UPDATED_AT in live.metadata.annotations:
            out.setdefault(secretdata.UPDATED_AT,
                           live.metadata.annotations[secretdata.UPDATED_AT])
    if adm.info.kind != "Service":
        return out
    for key in (*um.MANAGED_ANNOTATIONS, mountdigests.MOUNTED_DIGESTS):
        if live is not None and key not in out and key in live.metadata.annotations:
            out[key] = live.metadata.annotations[key]
    spec_changes = live is None or live.spec != _with_live_fields(adm, live).spec
    if spec_changes and change_cause and um.CHANGE_CAUSE not in adm.obj.metadata.annotations:
        out[um.CHANGE_CAUSE] = change_cause
    return out


def _with_live_fields(adm: Admitted, live: resource.Resource | None) -> resource.Resource:
    """``adm.obj`` with what it leaves to the live object: a Secret's sealed value when
    the digests say it is the same value (each sealing differs), and a Service's
    ``spec.forceUpdate`` (bumped by ``--force`` and the rotation controller) when the
    manifest does not set one."""
    want = adm.obj
    if live is None:
        return want
    if (adm.info.kind == "Secret" and secretdata.is_sealed(live.spec)
            and secretdata.digest(live) == secretdata.digest(want)):
        want = want.deepcopy()
        want.spec = copy.deepcopy(live.spec)
    elif adm.info.kind == "Service" and "forceUpdate" in live.spec:
        raw = adm.doc.data.get("spec")
        if not (isinstance(raw, dict) and "forceUpdate" in raw):
            want = want.deepcopy()
            want.spec["forceUpdate"] = live.spec["forceUpdate"]
    return want


def plan_one(adm: Admitted, live: resource.Resource | None,
             change_cause: str | None = None) -> Planned:
    """``change_cause``: the command line, recorded on a Service whose spec changes."""
    want = _with_live_fields(adm, live)
    annotations = _annotations(adm, live, change_cause)
    if live is None:
        if annotations != want.metadata.annotations:
            want = want.deepcopy()
            want.metadata.annotations = annotations
        return Planned(adm, None, want, CREATED, change_cause)
    if (live.spec == want.spec and live.metadata.labels == want.metadata.labels
            and live.metadata.annotations == annotations):
        return Planned(adm, live, live, UNCHANGED, change_cause)
    # deepcopy keeps the store's record of the live spec, so the update bumps
    # generation only when the spec really changed.
    desired = live.deepcopy()
    desired.spec = copy.deepcopy(want.spec)
    desired.metadata.labels = dict(want.metadata.labels)
    desired.metadata.annotations = annotations
    return Planned(adm, live, desired, CONFIGURED, change_cause)


async def read_live(store: client.Store, admitted: Sequence[Admitted],
                    ) -> list[resource.Resource | None]:
    """The stored object for each of ``admitted`` (None where absent)."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, adm in enumerate(admitted):
        groups.setdefault((adm.info.kind, adm.obj.namespace), []).append(i)
    out: list[resource.Resource | None] = [None] * len(admitted)
    limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def get_one(i: int) -> None:
        adm = admitted[i]
        async with limit:
            try:
                out[i] = await store.get(adm.info, adm.obj.name, adm.obj.namespace)
            except store_errors.NotFoundError:
                out[i] = None

    async def list_group(indices: list[int]) -> None:
        info = admitted[indices[0]].info
        async with limit:
            objs, _ = await store.list(info, admitted[indices[0]].obj.namespace)
        by_name = {o.name: o for o in objs}
        for i in indices:
            out[i] = by_name.get(admitted[i].obj.name)

    tasks = []
    for indices in groups.values():
        if len(indices) > LIST_THRESHOLD:
            tasks.append(list_group(indices))
        else:
            tasks.extend(get_one(i) for i in indices)
    await asyncio.gather(*tasks)
    return out


async def plan(store: client.Store, admitted: Sequence[Admitted],
               change_cause: str | None = None) -> list[Planned]:
    live = await read_live(store, admitted)
    return [plan_one(adm, obj, change_cause)
            for adm, obj in zip(admitted, live, strict=True)]


# --- 3. write ---

def _op(p: Planned) -> client.Op:
    return client.Op("create" if p.action == CREATED else "update", p.admitted.info, p.desired)


def chunks(planned: Sequence[Planned]) -> list[list[Planned]]:
    """Consecutive groups holding at most MAX_WRITES_PER_TXN writes each."""
    out: list[list[Planned]] = [[]]
    writes = 0
    for p in planned:
        if p.action != UNCHANGED:
            if writes == MAX_WRITES_PER_TXN:
                out.append([])
                writes = 0
            writes += 1
        out[-1].append(p)
    return out


async def write(store: client.Store, planned: Sequence[Planned],
                report: Callable[[Planned], None], *, replan: bool = True) -> None:
    """Write ``planned``, reporting each object once its transaction has committed.

    CRDs go first so that, when the apply needs several transactions, a kind is
    registered before any object of it is stored. ``replan=False`` lets a conflict
    through as ``ConflictError`` instead of deciding again: for callers (``service
    update``) whose desired object was computed from the version they read.
    """
    ordered = sorted(planned, key=lambda p: p.admitted.info.kind != kinds.CRD_KIND)
    writes = sum(p.action != UNCHANGED for p in ordered)
    with console.counter("writing", writes) as progress:
        for chunk in chunks(ordered):
            chunk = await _commit_chunk(store, chunk, replan)
            progress.advance(sum(p.action != UNCHANGED for p in chunk))
            for p in chunk:
                report(p)


async def _commit_chunk(store: client.Store, chunk: list[Planned],
                        replan: bool = True) -> list[Planned]:
    for attempt in range(CONFLICT_ATTEMPTS):
        ops = [_op(p) for p in chunk if p.action != UNCHANGED]
        if not ops:
            return chunk
        try:
            await store.commit(ops)
            return chunk
        except store_errors.ConflictError:
            if not replan:
                raise
            # Another writer got there first (or created an object we meant to create):
            # read again and redo the decisions for this chunk.
            await asyncio.sleep(0.01 * 2 ** attempt)
            chunk = await plan(store, [p.admitted for p in chunk], chunk[0].change_cause)
    names = ", ".join(p.name for p in chunk[:3]) + ("..." if len(chunk) > 3 else "")
    raise errors.CliError(f"gave up after {CONFLICT_ATTEMPTS} conflicting writes to {names}: "
                          "other writers keep changing these objects; try again")
