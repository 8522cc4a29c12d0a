"""Services in the update lifecycle's shapes (docs/updater.md), for the cli unit tests."""

from __future__ import annotations

from typing import Any

from shoal.crds import resource
from shoal.crds import updatemeta as um


def service(*, generation: int = 3, update: dict[str, Any] | None = None,
            revisions: list[dict[str, Any]] | None = None, revision: int | None = None,
            conditions: list[dict[str, Any]] | None = None,
            annotations: dict[str, str] | None = None, **spec: Any) -> resource.Resource:
    svc = resource.new("Service", "web", "default",
                       {"replicas": 3, "template": {"image": "nginx:3"}, **spec})
    svc.metadata.generation = generation
    svc.metadata.annotations = dict(annotations or {})
    status: dict[str, Any] = {}
    if update is not None:
        status["update"] = update
    if revisions is not None:
        status["revisions"] = revisions
    if revision is not None:
        status["revision"] = revision
    if conditions is not None:
        status["conditions"] = conditions
    svc.status = status
    return svc


def revision(number: int, image: str, cause: str = "") -> dict[str, Any]:
    return {"revision": number, "generation": number, "createdAt": "2024-05-01T12:00:00Z",
            "changeCause": cause, "spec": {"template": {"image": image}}}


def three_revisions(**kw: Any) -> resource.Resource:
    """Revisions 1..3 (nginx:1..3), the service on 3."""
    return service(revisions=[revision(1, "nginx:1", "swctl service create --name web "
                                                     "nginx:1"),
                              revision(2, "nginx:2", "swctl apply -f web.yaml"),
                              revision(3, "nginx:3")], revision=3, **kw)


def progressing(status: str, reason: str, message: str = "") -> list[dict[str, Any]]:
    return [{"type": um.PROGRESSING, "status": status, "reason": reason, "message": message}]
