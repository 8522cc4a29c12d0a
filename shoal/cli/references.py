"""``swctl apply``'s reference check: gather the facts, let ``crds.references`` decide.

Swarm refuses a service naming a network, secret or config that does not exist, and a
network whose subnet overlaps another's, before anything is stored; here apply is the
only admission there is, so it reads what the store holds (every Network; the Secrets
and Configs of the namespaces the incoming Services live in — one list call per kind
and namespace, only when some Service refers to one) and refuses the whole apply when
``crds.references.check`` finds a problem: one line per problem saying what, where
(object, file, document) and how to fix it, then ``nothing was written``.

What this cannot see — a network deleted after the check, a concurrent apply — the
allocator reports in the ``Allocated`` condition, which ``service ps`` shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from shoal.cli import common, errors
from shoal.crds import kinds, references, resource
from shoal.store import client

if TYPE_CHECKING:  # apply imports this module; the type is only for annotations
    from shoal.cli.apply import Admitted


async def check(store: client.Store, registry: kinds.Registry,
                admitted: Sequence[Admitted]) -> None:
    """Raise one CliError listing every reference and subnet problem of ``admitted``."""
    services = [a.obj for a in admitted if a.info.kind == "Service"]
    networks = [a for a in admitted if a.info.kind == "Network"]
    if not services and not networks:
        return
    stored: list[resource.Resource] = []
    if networks or any(s.spec.get("networks") for s in services):
        stored += (await store.list(registry.lookup("networks")))[0]
    wanted = {(ref.kind, ref.namespace) for s in services
              for ref in references.references(s) if ref.namespace is not None}
    for kind, namespace in sorted(wanted, key=lambda k: (k[0], k[1] or "")):
        stored += (await store.list(registry.lookup(f"{kind}s"), namespace))[0]
    problems = references.check([a.obj for a in admitted], stored)
    if not problems:
        return
    where = {id(a.obj): a for a in admitted}
    lines = []
    for problem in problems:
        adm = where[id(problem.obj)]
        ref = common.key_ref(adm.info, adm.obj.name, adm.obj.namespace)
        lines.append(f"{problem.field}: {problem.message} ({ref}, {adm.doc.where}); "
                     f"{problem.fix}")
    count = "the problem" if len(problems) == 1 else f"the {len(problems)} problems"
    lines.append(f"nothing was written: fix {count} above and apply again")
    raise errors.CliError(lines)
