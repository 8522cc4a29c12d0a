"""The updater's lifecycle as a user sees it: failureAction rollback rolls a bad image
back by itself, a ``shoal.io/rollback-request`` rolls back to a kept revision (and one
naming no kept revision is refused), ``status.revisions`` keeps ``revisionHistoryLimit``
revisions with kubectl's renumbering, and ``spec.paused`` holds a rollout until it is
cleared.

Real etcd, a real ``swctl controller-manager`` and a real hollow agent with three nodes
(it rejects images whose name contains ``missing``), as in test_cli_rollout, whose
cluster fixture and helpers this module shares. Annotations are written with the store,
as ``swctl rollout undo`` will write them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from shoal.controllers import common
from shoal.crds.resource import Resource
from shoal.runtime import cas
from shoal.store import client
from tests.helpers import eventually_sync as eventually
from tests.integration import test_cli_rollout as rollout
from tests.integration.cli_support import Cluster, Swctl
from tests.integration.test_cli_rollout import (
    apply,
    manifest,
    running,
    tasks,
    update_status,
)

cluster = rollout.cluster  # the same module-scoped cluster fixture, one for this module


def service(swctl: Swctl, name: str) -> dict[str, Any]:
    return dict(json.loads(swctl("get", "service", name, "-o", "json").stdout))


def progressing(obj: dict[str, Any]) -> dict[str, Any]:
    for cond in obj["status"].get("conditions") or []:
        if cond["type"] == "Progressing":
            return dict(cond)
    return {}


def annotate(swctl: Swctl, name: str, key: str, value: str) -> None:
    async def write() -> None:
        store = await client.Store.connect(swctl.etcd_url, prefix=swctl.prefix)
        try:
            svc = await store.get(common.SERVICES, name, "default")

            def put(obj: Resource) -> None:
                obj.metadata.annotations[key] = value
            await cas.mutate(store, common.SERVICES, svc, put)
        finally:
            await store.close()
    asyncio.run(write())


def images(swctl: Swctl, name: str) -> list[str]:
    return sorted(running(swctl, name).values())


def test_failure_action_rollback_rolls_a_bad_image_back(cluster: Cluster) -> None:
    swctl = cluster.swctl
    extra = {"update": "failureAction: rollback", "restart": "delay: 60s"}
    apply(swctl, "shelf", manifest("shelf", **extra))
    # swctl apply -f shelf.yaml -d   (image: shoal/missing:2.0, failureAction: rollback)
    apply(swctl, "shelf", manifest("shelf", image="shoal/missing:2.0", **extra), 0, "-d")
    obj = eventually(lambda: (lambda o: o if o["status"].get("update", {}).get("state")
                              == "rollback_completed" else None)(service(swctl, "shelf")),
                     40, "rollback completed")
    assert obj["spec"]["template"]["image"] == "shoal/busybox:1.0"
    assert obj["spec"]["replicas"] == 3
    notes = obj["metadata"]["annotations"]
    assert notes["shoal.io/rollback-generation"] == str(obj["metadata"]["generation"])
    assert notes["shoal.io/change-cause"] == "rollback to revision 1"
    cond = progressing(obj)
    assert (cond["status"], cond["reason"]) == ("False", "RolledBack")
    assert cond["message"].startswith("update rolled back due to failure of task shelf.1.2 ")
    assert "image not found: shoal/missing:2.0" in cond["message"]
    # Revision 1 ran again: renumbered to 3 after the bad revision 2.
    assert [(r["revision"], r["spec"]["template"]["image"])
            for r in obj["status"]["revisions"]] == [(2, "shoal/missing:2.0"),
                                                     (3, "shoal/busybox:1.0")]
    assert obj["status"]["revision"] == 3
    eventually(lambda: images(swctl, "shelf") == ["shoal/busybox:1.0"] * 3, 30,
               "three tasks on the old image")


def test_rollback_request_rolls_back_and_a_missing_revision_is_refused(
        cluster: Cluster) -> None:
    swctl = cluster.swctl
    apply(swctl, "deck", manifest("deck", replicas=2))
    apply(swctl, "deck", manifest("deck", replicas=2, image="shoal/busybox:2.0"))
    # swctl rollout undo service/deck   (writes shoal.io/rollback-request: previous)
    annotate(swctl, "deck", "shoal.io/rollback-request", "previous")
    obj = eventually(lambda: (lambda o: o if o["status"].get("update", {}).get("state")
                              == "rollback_completed" else None)(service(swctl, "deck")),
                     30, "rollback completed")
    assert obj["spec"]["template"]["image"] == "shoal/busybox:1.0"
    assert "shoal.io/rollback-request" not in obj["metadata"]["annotations"]
    cond = progressing(obj)
    assert (cond["status"], cond["reason"]) == ("True", "RollbackCompleted")
    assert images(swctl, "deck") == ["shoal/busybox:1.0"] * 2

    # swctl rollout undo service/deck --to-revision 9: not kept, refused and removed.
    annotate(swctl, "deck", "shoal.io/rollback-request", "9")
    obj = eventually(lambda: (lambda o: o if "shoal.io/rollback-request" not in
                              o["metadata"]["annotations"] else None)(service(swctl, "deck")),
                     20, "request removed")
    cond = progressing(obj)
    assert cond["status"] == "False" and "revision 9 is not in the history" in cond["message"]
    assert obj["spec"]["template"]["image"] == "shoal/busybox:1.0"


def test_revision_history_keeps_the_limit_and_renumbers(cluster: Cluster) -> None:
    swctl = cluster.swctl

    def text(image: str) -> str:
        return manifest("rack", replicas=1, image=image) + "  revisionHistoryLimit: 2\n"
    for image in ("shoal/busybox:1.0", "shoal/busybox:2.0", "shoal/busybox:3.0"):
        apply(swctl, "rack", text(image))

    def history() -> list[tuple[int, str]]:
        status = service(swctl, "rack")["status"]
        return [(r["revision"], r["spec"]["template"]["image"])
                for r in status.get("revisions") or []]
    eventually(lambda: history() == [(2, "shoal/busybox:2.0"), (3, "shoal/busybox:3.0")],
               20, "two newest revisions")
    apply(swctl, "rack", text("shoal/busybox:2.0"))  # revision 2 again: now number 4
    eventually(lambda: history() == [(3, "shoal/busybox:3.0"), (4, "shoal/busybox:2.0")],
               20, "revision 2 renumbered to 4")
    assert service(swctl, "rack")["status"]["revision"] == 4


def test_spec_paused_holds_the_rollout_until_cleared(cluster: Cluster) -> None:
    swctl = cluster.swctl
    apply(swctl, "dock", manifest("dock", replicas=2))
    before = running(swctl, "dock")
    held = manifest("dock", replicas=2, image="shoal/busybox:2.0") + "  paused: true\n"
    # swctl rollout pause service/dock, then a new image
    apply(swctl, "dock", held, 0, "-d")
    status = eventually(lambda: (lambda s: s if s.get("state") == "paused" else None)(
        update_status(swctl, "dock")), 20, "update paused by user")
    assert status["message"] == ("update paused by user (swctl rollout resume service/dock "
                                 "continues it)")
    assert running(swctl, "dock") == before
    assert all(t["spec"]["template"]["image"] == "shoal/busybox:1.0"
               for t in tasks(swctl, "dock"))
    # swctl rollout resume service/dock
    apply(swctl, "dock", manifest("dock", replicas=2, image="shoal/busybox:2.0"))
    eventually(lambda: update_status(swctl, "dock").get("state") == "completed", 30,
               "update completed")
    assert images(swctl, "dock") == ["shoal/busybox:2.0"] * 2
