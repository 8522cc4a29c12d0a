"""The update lifecycle's vocabulary as stored on a Service (docs/updater.md): the
annotations swctl and the updater hand work over with, the ``status.update`` states,
the ``Progressing`` condition's reasons, and lenient readers of ``status.revisions``.

It lives in ``crds`` because both sides of the contract read it — ``swctl`` writes the
requests and follows the status, the updater carries the requests out and writes the
status — and neither may import the other's package. Pure: no I/O. Readers never raise
on a malformed stored value (a status is whatever reached etcd): they skip what they
cannot read, so ``swctl rollout history`` of a damaged service still shows the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Final

from shoal.crds import kinds, openapi, resource

CHANGE_CAUSE: Final = "shoal.io/change-cause"
ROLLBACK_REQUEST: Final = "shoal.io/rollback-request"
ROLLBACK_GENERATION: Final = "shoal.io/rollback-generation"
#: Why the updater rolled back by itself (absent for an asked-for rollback).
ROLLBACK_REASON: Final = "shoal.io/rollback-reason"
RESUMED_AT: Final = "shoal.io/resumed-at"
REBALANCE_REQUEST: Final = "shoal.io/rebalance-request"
#: ``rollback-request`` value for "the revision before the current one".
PREVIOUS: Final = "previous"
#: Annotations other writers than a manifest put on a Service: ``apply`` keeps their
#: live values when the manifest does not name them, so re-applying an unchanged file
#: is "unchanged" and never cancels a pending request.
MANAGED_ANNOTATIONS: Final = (CHANGE_CAUSE, ROLLBACK_REQUEST, ROLLBACK_GENERATION,
                              ROLLBACK_REASON, RESUMED_AT, REBALANCE_REQUEST)

UPDATING: Final = "updating"
PAUSED: Final = "paused"
COMPLETED: Final = "completed"
ROLLBACK_STARTED: Final = "rollback_started"
ROLLBACK_PAUSED: Final = "rollback_paused"
ROLLBACK_COMPLETED: Final = "rollback_completed"
ROLLBACK_STATES: Final = (ROLLBACK_STARTED, ROLLBACK_PAUSED, ROLLBACK_COMPLETED)

PROGRESSING: Final = "Progressing"
#: ``Progressing`` reason of a rollback that was asked for (True) and of an automatic
#: one after failures (False: the service runs, but not what was asked for).
REASON_ROLLBACK_COMPLETED: Final = "RollbackCompleted"
REASON_ROLLED_BACK: Final = "RolledBack"
#: ``Progressing`` False: a rollback request the updater could not carry out (removed).
REASON_ROLLBACK_REFUSED: Final = "RollbackRefused"
#: The ``status.update.message`` of a rollback that was asked for (Swarm's words).
MANUAL_ROLLBACK: Final = "manually requested rollback"


@dataclasses.dataclass(frozen=True)
class Revision:
    """One entry of ``status.revisions``."""

    number: int
    generation: int | None
    created_at: str | None
    change_cause: str
    spec: dict[str, Any]

    @property
    def image(self) -> str:
        template = self.spec.get("template")
        return str(template.get("image") or "") if isinstance(template, dict) else ""


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def revisions(service: resource.Resource) -> list[Revision]:
    """``status.revisions`` oldest first; entries without a whole revision number are
    skipped."""
    raw = service.status.get("revisions") if isinstance(service.status, dict) else None
    out = []
    for entry in raw if isinstance(raw, list) else []:
        if not isinstance(entry, dict) or _int(entry.get("revision")) is None:
            continue
        spec = entry.get("spec")
        out.append(Revision(int(entry["revision"]), _int(entry.get("generation")),
                            str(entry["createdAt"]) if entry.get("createdAt") else None,
                            str(entry.get("changeCause") or ""),
                            copy.deepcopy(spec) if isinstance(spec, dict) else {}))
    return sorted(out, key=lambda r: r.number)


def current_revision(service: resource.Resource) -> int | None:
    """``status.revision``: the number of the revision the service runs."""
    return _int(service.status.get("revision")) if isinstance(service.status, dict) else None


def update_status(service: resource.Resource) -> dict[str, Any]:
    """``status.update``, or ``{}`` when there is none (or it is not an object)."""
    value = service.status.get("update") if isinstance(service.status, dict) else None
    return dict(value) if isinstance(value, dict) else {}


def progressing(service: resource.Resource) -> dict[str, Any] | None:
    """The ``Progressing`` condition, if the updater has written one."""
    conditions = service.status.get("conditions") if isinstance(service.status, dict) \
        else None
    for cond in conditions if isinstance(conditions, list) else []:
        if isinstance(cond, dict) and cond.get("type") == PROGRESSING:
            return cond
    return None


@functools.cache
def _config_defaults(field: str) -> dict[str, Any]:
    schema = kinds.Registry.builtin().lookup("services").schema
    sub = schema["properties"]["spec"]["properties"][field]
    out: dict[str, Any] = {}
    openapi.apply_defaults(out, sub)
    return out


def config_defaults(field: str) -> dict[str, Any]:
    """Swarm's defaults of ``updateConfig`` or ``rollbackConfig`` as the Service schema
    declares them (its one home), e.g. ``{"parallelism": 1, "order": "stop-first", ...}``."""
    return dict(_config_defaults(field))
