"""What a Service's ``status.update`` says about the rollout ``swctl`` is following.

The updater writes the state of a rollout (docs/updater.md); this module turns one
stored Service into a verdict for the follower (``converge`` with ``follow_update``):
still going, finished well, or finished badly with the message to exit with. Pure, so
every state of the contract is unit-tested without etcd.

The rules, as ``docker service update`` and ``kubectl rollout status`` behave:

* a service that still carries a ``rollback-request`` (the updater has not picked it
  up) is *pending*: its spec is not yet the one the rollback brings in;
* a status written for an older generation than the service's says nothing about the
  change being followed: the tasks decide (a replicas-only change makes no rollout,
  and an image change leaves tasks of the older spec that the tasks check sees);
* ``completed`` is done, and so is ``rollback_completed`` after a rollback that was
  asked for (``Progressing`` True/``RollbackCompleted``); the tasks must still be seen
  converged, which the follower checks;
* ``paused`` and ``rollback_paused`` fail at once with the updater's message; an
  automatic rollback (``Progressing`` False/``RolledBack``) fails once it has completed:
  the service runs, but not what was asked for;
* a status without ``generation`` (written before the updater existed) is not trusted
  for the outcome: the tasks alone decide, as before.
"""

from __future__ import annotations

import dataclasses
from typing import Final, Literal

from shoal.crds import resource
from shoal.crds import updatemeta as um

PENDING: Final = "pending"
GOING: Final = "going"
DONE: Final = "done"
FAILED: Final = "failed"
Outcome = Literal["pending", "going", "done", "failed"]


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    #: For FAILED: why, for the error. Otherwise the status message, if any.
    message: str = ""
    #: Docker's first line of a rollback (``rollback: manually requested rollback``).
    header: str | None = None
    #: False when the status cannot decide (no updater status): tasks alone decide.
    authoritative: bool = True
    #: The updater keeps this service's status (it records revisions), so it will
    #: report on any rollout, pause or rollback in its own words.
    updater_reports: bool = False


#: The first line of a rollback asked for by hand.
MANUAL_ROLLBACK_HEADER: Final = f"rollback: {um.MANUAL_ROLLBACK}"


def _rollback_header(service: resource.Resource, status: dict[str, object]) -> str | None:
    """Swarm's first line of a rollback: ``rollback: manually requested rollback``, or
    ``rollback: update rolled back due to failure of task ...`` — from the updater's
    ``rollback-reason`` (the message carries progress too, which changes)."""
    if status.get("state") not in um.ROLLBACK_STATES:
        return None
    reason = service.metadata.annotations.get(um.ROLLBACK_REASON)
    if reason:
        return f"rollback: update rolled back due to failure of {reason}"
    return MANUAL_ROLLBACK_HEADER


def automatic_rollback(service: resource.Resource) -> bool:
    """The service was rolled back after failures, not on request."""
    cond = um.progressing(service)
    if cond is not None:
        return cond.get("reason") == um.REASON_ROLLED_BACK
    message = str(um.update_status(service).get("message") or "")
    return "due to failure" in message


def verdict(service: resource.Resource, asked_rollback: bool = False) -> Verdict:
    """``asked_rollback``: the follower wrote a rollback request, so the updater
    refusing one (it removes the request, ``Progressing`` False/``RollbackRefused``)
    ends the wait; otherwise a refusal long past says nothing about the rollout."""
    said = _verdict(service, asked_rollback)
    reports = bool(um.revisions(service)) or type(
        um.update_status(service).get("generation")) is int
    return dataclasses.replace(said, updater_reports=reports)


def _verdict(service: resource.Resource, asked_rollback: bool) -> Verdict:
    status = um.update_status(service)
    if um.ROLLBACK_REQUEST in service.metadata.annotations:
        return Verdict(PENDING, "waiting for the updater to start the rollback")
    cond = um.progressing(service) or {}
    if asked_rollback and cond.get("reason") == um.REASON_ROLLBACK_REFUSED:
        return Verdict(FAILED, str(cond.get("message") or "rollback refused"))
    generation = status.get("generation")
    if not status or type(generation) is not int:
        return Verdict(GOING, str(status.get("message") or ""), authoritative=False)
    if generation < service.metadata.generation:
        # About an earlier change. The updater writes a new one only for a change that
        # replaces tasks; for any other (replicas, updateConfig) there is no rollout to
        # wait for, and for one that does, the tasks still run the older spec.
        return Verdict(GOING, str(status.get("message") or ""), authoritative=False)
    state = status.get("state")
    message = str(status.get("message") or state or "")
    header = _rollback_header(service, status)
    if state in (um.PAUSED, um.ROLLBACK_PAUSED):
        return Verdict(FAILED, message, header)
    if state == um.COMPLETED:
        return Verdict(DONE, message, header)
    if state == um.ROLLBACK_COMPLETED:
        if automatic_rollback(service):
            cond = um.progressing(service) or {}
            why = str(cond.get("message") or message)
            return Verdict(FAILED, f"service rolled back: {why}", header)
        return Verdict(DONE, message, header)
    return Verdict(GOING, message, header)
