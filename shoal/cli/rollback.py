"""Asking for a rollback: ``swctl rollout undo``, ``service rollback`` and ``service
update --rollback`` all write ``shoal.io/rollback-request`` here, then follow it.

swctl does not write the older spec itself: the updater owns what a rollback is (which
sections go back, which stay, the revision renumbering, ``rollbackConfig``), so swctl
only asks (docs/updater.md). The request is checked against ``status.revisions``
(``revisions.rollback_target``) on the very version it is written to — the write is
compare-and-swap, and a conflict re-reads and checks again — so a revision that does
not exist is refused with nothing written. Then, unless ``-d``, the rollback is
followed like Docker's (``rollback: manually requested rollback``, ``overall progress:
...``, ``verify: Service converged``) by ``converge``, which waits for the updater to
take the request up before it believes the tasks.
"""

from __future__ import annotations

from shoal.cli import common, converge, edits, get, revisions
from shoal.crds import kinds, resource
from shoal.crds import updatemeta as um
from shoal.store import client
from shoal.store import errors as store_errors


async def request(store: client.Store, info: kinds.KindInfo, name: str, namespace: str,
                  to_revision: int | None) -> str:
    """Write the request on service ``name``; returns the value written."""
    try:
        service = await store.get(info, name, namespace)
    except store_errors.NotFoundError:
        raise get.not_found(info, name, namespace) from None
    written: list[str] = []

    def ask(obj: resource.Resource) -> None:
        target = revisions.rollback_target(obj, to_revision)  # raises: nothing written
        obj.metadata.annotations[um.ROLLBACK_REQUEST] = target
        written[:] = [target]

    await edits.edit(store, info, service, ask, f"asking for the rollback of {name}")
    return written[-1]


def describe_target(target: str) -> str:
    return "the previous revision" if target == um.PREVIOUS else f"revision {target}"


async def follow(store: client.Store, namespace: str, name: str,
                 wait: converge.WaitOptions | None) -> None:
    if wait is not None:
        await converge.wait_for_services(store, [(namespace, name)], wait,
                                         asked_rollback=True)


def service_info(registry: kinds.Registry) -> kinds.KindInfo:
    return registry.lookup("services")


def namespace_of(info: kinds.KindInfo, namespace: str | None) -> str:
    return common.namespace_for(info, namespace) or resource.DEFAULT_NAMESPACE
