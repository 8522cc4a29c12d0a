"""shoal/cli/apply.py plan_one: the change cause is recorded when a Service's spec
changes, and the update lifecycle's annotations never make an unchanged manifest
"configured" (nor does re-applying one cancel a pending rollback request)."""

from __future__ import annotations

from typing import Any

from shoal.cli import apply, manifests
from shoal.crds import kinds, resource
from shoal.crds import updatemeta as um

CAUSE = "swctl apply -f web.yaml"


def admitted(image: str = "nginx:1", annotations: dict[str, str] | None = None
             ) -> apply.Admitted:
    data: dict[str, Any] = {"apiVersion": "shoal.io/v1", "kind": "Service",
                            "metadata": {"name": "web", "annotations": annotations or {}},
                            "spec": {"template": {"image": image}}}
    return apply.admit_documents(kinds.Registry.builtin(),
                                 [manifests.Document("web.yaml", 1, data)])[0]


def stored(adm: apply.Admitted, **annotations: str) -> resource.Resource:
    live = adm.obj.deepcopy()
    live.metadata.namespace = "default"
    live.metadata.annotations.update(annotations)
    return live


def test_a_new_or_changed_service_records_the_command_line() -> None:
    created = apply.plan_one(admitted(), None, CAUSE)
    assert created.action == apply.CREATED
    assert created.desired.metadata.annotations[um.CHANGE_CAUSE] == CAUSE
    live = stored(admitted(), **{um.CHANGE_CAUSE: "swctl service create nginx:1"})
    changed = apply.plan_one(admitted("nginx:2"), live, CAUSE)
    assert changed.action == apply.CONFIGURED
    assert changed.desired.metadata.annotations[um.CHANGE_CAUSE] == CAUSE


def test_an_unchanged_manifest_stays_unchanged_and_keeps_the_requests() -> None:
    live = stored(admitted(), **{um.CHANGE_CAUSE: "swctl service create nginx:1",
                                 um.ROLLBACK_REQUEST: "previous"})
    again = apply.plan_one(admitted(), live, CAUSE)
    assert again.action == apply.UNCHANGED
    changed = apply.plan_one(admitted("nginx:2"), live, CAUSE)
    assert changed.desired.metadata.annotations[um.ROLLBACK_REQUEST] == "previous"


def test_a_manifests_own_change_cause_wins() -> None:
    own = admitted("nginx:2", {um.CHANGE_CAUSE: "bump nginx for CVE-1"})
    planned = apply.plan_one(own, stored(admitted()), CAUSE)
    assert planned.desired.metadata.annotations[um.CHANGE_CAUSE] == "bump nginx for CVE-1"
