"""``swctl rollout history`` and the checks of ``rollout undo``, as pure functions over
a stored Service: the history table, one revision as YAML, and which revision a
rollback request may name.

A rollback is asked for by writing ``shoal.io/rollback-request`` (``previous`` or a
revision number); the updater carries it out. It can only go to a revision that
``status.revisions`` still holds, so that is checked here before anything is written,
and the error names the revisions there are — a typo never leaves a request the
updater would have to refuse later, in a condition nobody is looking at.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

from shoal.cli import errors, printers
from shoal.crds import resource
from shoal.crds import updatemeta as um

HISTORY_HEADERS: Final = ["REVISION", "CHANGE-CAUSE", "IMAGE", "CREATED"]
CURRENT_MARK: Final = " (current)"


def ref(service: resource.Resource) -> str:
    ns = service.namespace or resource.DEFAULT_NAMESPACE
    return f"service/{service.name}" + ("" if ns == resource.DEFAULT_NAMESPACE
                                         else f" in namespace {ns}")


def _numbers(found: list[um.Revision]) -> str:
    return ", ".join(str(r.number) for r in found)


def history_rows(service: resource.Resource,
                 now: datetime.datetime | None = None) -> list[list[str]]:
    """One row per revision, oldest first; the current one marked ``3 (current)``."""
    current = um.current_revision(service)
    rows = []
    for rev in um.revisions(service):
        mark = CURRENT_MARK if rev.number == current else ""
        rows.append([f"{rev.number}{mark}", rev.change_cause or printers.NONE,
                     rev.image or printers.NONE, printers.age(rev.created_at, now)])
    return rows


def no_history(service: resource.Resource) -> errors.CliError:
    return errors.CliError(
        f"{ref(service)} has no recorded revisions yet: the updater records one when it "
        "first sees the service (is the controller-manager running? swctl up)")


def find(service: resource.Resource, number: int) -> um.Revision:
    """Revision ``number``, or an error naming the revisions there are."""
    found = um.revisions(service)
    for rev in found:
        if rev.number == number:
            return rev
    if not found:
        raise no_history(service)
    raise errors.CliError(
        f"{ref(service)} has no revision {number}: its revisions are {_numbers(found)} "
        f"(see swctl rollout history service/{service.name})")


def revision_yaml(service: resource.Resource, number: int) -> str:
    """``rollout history --revision N``: the recorded entry, spec included."""
    rev = find(service, number)
    data: dict[str, Any] = {"revision": rev.number}
    if rev.generation is not None:
        data["generation"] = rev.generation
    if rev.created_at:
        data["createdAt"] = rev.created_at
    data["changeCause"] = rev.change_cause or None
    data["current"] = rev.number == um.current_revision(service)
    data["spec"] = rev.spec
    return printers.to_yaml(data)


def rollback_target(service: resource.Resource, to_revision: int | None) -> str:
    """The ``rollback-request`` value for ``rollout undo [--to-revision N]``.

    Raises CliError when there is nothing to go back to, or N is not recorded. Going
    "back" to the revision the service runs is refused too: it would change nothing,
    and Swarm's rollback of a rollback would flip-flop instead.
    """
    found = um.revisions(service)
    current = um.current_revision(service)
    if not to_revision:  # None, or kubectl's 0: the previous revision
        if len(found) < 2:
            if not found:
                raise no_history(service)
            raise errors.CliError(
                f"{ref(service)} has no previous revision to roll back to: it has only "
                f"revision {found[0].number} (see swctl rollout history "
                f"service/{service.name})")
        return um.PREVIOUS
    rev = find(service, to_revision)
    if rev.number == current:
        raise errors.CliError(
            f"{ref(service)} already runs revision {rev.number}: nothing to roll back "
            f"(its revisions are {_numbers(found)}; see swctl rollout history "
            f"service/{service.name})")
    return str(rev.number)
