"""Which references of the objects being applied cannot be met: Swarm's admission checks.

Swarm refuses ``docker service create --network nginx_network`` when no such network
exists (``network "nginx_network" not found``), and a network whose subnet overlaps
another's; Shoal has no API server, so ``swctl apply`` asks this module before it writes
anything. Given the objects of one apply (already admitted one by one) and the Networks,
Secrets and Configs the store holds, :func:`check` returns every problem, in the order
of the incoming objects:

* a Service's ``spec.networks`` entry, ``spec.template.secrets[].source`` or
  ``spec.template.configs[].source`` naming an object that exists neither in the store
  nor in the same apply (Networks are cluster-wide; Secrets and Configs are looked up in
  the Service's namespace). An object being deleted counts as missing;
* a Network asking for a subnet (``spec.subnet``) that overlaps the subnet another
  network holds or asks for, stored or in the same apply, or the service VIP pool — the
  rule is :func:`shoal.crds.networking.subnet_overlap`, the one the allocator obeys.

What admission cannot know (the network deleted after the Service was stored, a
concurrent apply) is the allocator's to report, in the task's and service's
``Allocated`` condition; a secret or config deleted since is the agent's, which rejects
the task that needs it. Pure functions of the objects handed in; no I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from shoal.crds import networking as nw
from shoal.crds.resource import DEFAULT_NAMESPACE, Resource

NETWORK: Final = "network"
SECRET: Final = "secret"
CONFIG: Final = "config"
_KINDS: Final = {"Network": NETWORK, "Secret": SECRET, "Config": CONFIG}


@dataclasses.dataclass(frozen=True)
class Reference:
    """One name an object refers to: ``kind`` (network, secret or config), ``name``,
    the namespace it is looked up in (None for networks) and the field naming it."""

    kind: str
    name: str
    namespace: str | None
    field: str


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why ``obj`` (one of the incoming objects) cannot be applied: the ``field`` at
    fault, what is wrong (``message``) and how to fix it (``fix``)."""

    obj: Resource
    field: str
    message: str
    fix: str


def references(service: Resource) -> list[Reference]:
    """The networks, secrets and configs a Service names, in field order. Entries that
    are not names are skipped: admission has refused them already."""
    out: list[Reference] = []
    networks = service.spec.get("networks")
    if isinstance(networks, list):
        for i, item in enumerate(networks):
            name = nw.network_entry_name(item)
            if name is not None:
                where = f"spec.networks[{i}]" + (".name" if isinstance(item, dict) else "")
                out.append(Reference(NETWORK, name, None, where))
    namespace = service.metadata.namespace or DEFAULT_NAMESPACE
    template = service.spec.get("template")
    template = template if isinstance(template, dict) else {}
    for kind, key in ((SECRET, "secrets"), (CONFIG, "configs")):
        items = template.get(key)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            source = item.get("source") if isinstance(item, dict) else None
            if isinstance(source, str) and source:
                out.append(Reference(kind, source, namespace,
                                     f"spec.template.{key}[{i}].source"))
    return out


class _Known:
    """The Networks, Secrets and Configs that will exist once the apply is written:
    stored ones, replaced by the incoming ones of the same name."""

    def __init__(self, incoming: Sequence[Resource], stored: Iterable[Resource]) -> None:
        self.objects: dict[tuple[str, str | None, str], Resource] = {}
        # Applying an object that is being deleted does not stop its deletion (apply
        # keeps the live metadata), so it stays "being deleted" whatever the apply holds.
        self.deleting: set[tuple[str, str | None, str]] = set()
        for obj in stored:
            if obj.kind in _KINDS:
                self.objects[self._key(obj)] = obj
                if obj.metadata.deletionTimestamp:
                    self.deleting.add(self._key(obj))
        for obj in incoming:
            if obj.kind in _KINDS:
                self.objects[self._key(obj)] = obj

    @staticmethod
    def _key(obj: Resource) -> tuple[str, str | None, str]:
        kind = _KINDS[obj.kind]
        namespace = None if kind == NETWORK else obj.metadata.namespace or DEFAULT_NAMESPACE
        return (kind, namespace, obj.name)

    def get(self, ref: Reference) -> Resource | None:
        return self.objects.get((ref.kind, ref.namespace, ref.name))

    def is_deleting(self, ref: Reference) -> bool:
        return (ref.kind, ref.namespace, ref.name) in self.deleting

    def networks(self) -> list[Resource]:
        """Networks that will hold their subnet: the ones being deleted are on their way
        out (the allocator releases what they hold)."""
        return [o for key, o in self.objects.items()
                if key[0] == NETWORK and key not in self.deleting]


def check(incoming: Sequence[Resource], stored: Iterable[Resource],
          vip_pool: str = nw.SERVICE_VIP_POOL) -> list[Problem]:
    """Every reference or subnet problem of ``incoming``, in their order.

    ``stored`` holds (at least) every stored Network, and the Secrets and Configs of the
    namespaces of the incoming Services; objects of other kinds are ignored.
    """
    known = _Known(incoming, stored)
    pool = ipaddress.IPv4Network(vip_pool)
    out: list[Problem] = []
    for obj in incoming:
        if obj.kind == "Service":
            out += _service_problems(obj, known)
        elif obj.kind == "Network":
            out += _subnet_problems(obj, known, pool)
    return out


def _service_problems(service: Resource, known: _Known) -> list[Problem]:
    out: list[Problem] = []
    for ref in references(service):
        found = known.get(ref)
        if found is None and ref.kind == NETWORK and ref.name == nw.INGRESS_NETWORK and \
                nw.ingress_name(known.networks()) is None:
            continue  # the allocator creates "ingress" while no network is the mesh
        if found is None or known.is_deleting(ref):
            out.append(Problem(service, ref.field, _missing(ref, found), _create(ref)))
    return out


def _missing(ref: Reference, found: Resource | None) -> str:
    where = f' in namespace "{ref.namespace}"' if ref.namespace else ""
    state = "is being deleted" if found is not None else "not found"
    return f'{ref.kind} "{ref.name}" {state}{where}'


def _create(ref: Reference) -> str:
    if ref.kind == NETWORK:
        return (f"create it first (swctl network create {ref.name}) or add the Network to "
                "the files you apply")
    kind = ref.kind.capitalize()
    return (f"apply a {kind} named {ref.name} in namespace {ref.namespace} first, or add "
            "it to the files you apply")


# --- subnets ---

def _subnet_problems(network: Resource, known: _Known,
                     pool: ipaddress.IPv4Network) -> list[Problem]:
    subnet = nw.requested_subnet(network)
    if subnet is None:
        return []  # the allocator picks a free one
    taken: list[tuple[str, ipaddress.IPv4Network]] = []
    for other in known.networks():
        held = nw.held_subnet(other)
        if held is not None:
            taken.append((other.name, held))
    clash = nw.subnet_overlap(subnet, network.name, taken, pool)
    if clash is None:
        return []
    return [Problem(network, "spec.subnet", clash.message,
                    "pick a subnet no other network uses (swctl network ls lists them), "
                    "or leave spec.subnet out to get a free one")]
