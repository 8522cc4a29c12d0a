"""Changing a running service with ``swctl apply -f``: the tasks are replaced one by one
(Swarm's default update), apply says converged only once every task runs the new spec,
a bad image pauses the rollout and apply exits 1 with the reason, a revert converges, and
a replicas-only change replaces nothing; and ``spec.updateConfig`` as a user sees it,
checked at every etcd revision of the tasks (``Recorder``): parallelism 2 with a delay
replaces two tasks per batch with the delay between; start-first never has fewer than
replicas running nor more than replicas + parallelism desired running; failureAction
continue goes past failed tasks; maxFailureRatio tolerates that many.

Real etcd, a real ``swctl controller-manager`` and a real hollow agent with three nodes
(``swctl agent --runtime hollow``: it rejects images whose name contains ``missing``, as
a node without the image would), each a separate process, as in test_cli_orchestration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from shoal.crds import kinds
from shoal.store import client, etcd_server
from tests.helpers import eventually_sync as eventually
from tests.integration.cli_support import Cluster, Swctl, hollow_cluster

NODES = ["n-0", "n-1", "n-2"]
VERIFY = ("--verify-window", "0.3")
T = TypeVar("T")

MY_WEB = """\
apiVersion: shoal.io/v1
kind: Service
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  forceUpdate: {force}
  template: {{image: "{image}", command: [httpd, -f, -p, "8080"]}}
  placement: {{constraints: [{constraints}]}}
  updateConfig: {{{update}}}
  rollbackConfig: {{{monitor}}}
  restartPolicy: {{{restart}}}
"""
# Swarm's monitor period (5 s) is waited out after every rollout's last batch before the
# update counts as completed. No test here is about it (their failures are rejections,
# which count whenever they happen), so a short one saves seconds per rollout.
MONITOR = "monitor: 0.5s"


def manifest(name: str, image: str = "shoal/busybox:1.0", replicas: int = 3, force: int = 0,
             constraints: str = "", update: str = "", restart: str = "") -> str:
    update = ", ".join(part for part in (MONITOR, update) if part)
    return MY_WEB.format(name=name, image=image, replicas=replicas, force=force,
                         constraints=constraints, update=update, restart=restart,
                         monitor=MONITOR)





@pytest.fixture(scope="module")
def cluster(etcd: etcd_server.EtcdServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    swctl = Swctl(etcd.url, f"/t-{uuid.uuid4().hex[:12]}", tmp_path_factory.mktemp("rollout"))
    # Tasks take 0.3 s to start: long enough to catch a rollout half-way.
    with hollow_cluster(swctl, "--hollow-start-delay", "0.3") as c:
        yield c


def tasks(swctl: Swctl, service: str) -> list[dict[str, Any]]:
    items = json.loads(swctl("get", "tasks", "-o", "json").stdout)["items"]
    return [t for t in items if t["spec"]["serviceName"] == service]


def running(swctl: Swctl, service: str) -> dict[str, str]:
    """Task name -> image of the tasks desired and observed running."""
    return {t["metadata"]["name"]: t["spec"]["template"]["image"]
            for t in tasks(swctl, service)
            if t["spec"]["desiredState"] == "running" and t["status"].get("state") == "running"}


def update_status(swctl: Swctl, service: str) -> dict[str, Any]:
    obj = json.loads(swctl("get", "service", service, "-o", "json").stdout)
    return dict(obj["status"].get("update") or {})


def apply(swctl: Swctl, name: str, text: str, expect: int = 0,
          *extra: str) -> subprocess.CompletedProcess[str]:
    path = swctl.write(f"{name}.yaml", text)
    return swctl("apply", "-f", str(path), *VERIFY, *extra, expect=expect, timeout=90)


def test_image_change_replaces_tasks_one_by_one_then_says_converged(cluster: Cluster) -> None:
    swctl = cluster.swctl
    # swctl apply -f my-web.yaml   (image: shoal/busybox:1.0, then shoal/busybox:2.0)
    apply(swctl, "my-web", manifest("my-web"))
    before = running(swctl, "my-web")
    assert sorted(before.values()) == ["shoal/busybox:1.0"] * 3

    out = apply(swctl, "my-web", manifest("my-web", image="shoal/busybox:2.0")).stdout
    lines = out.splitlines()
    assert lines[0] == "service/my-web configured"
    # docker service update's progress: the count climbs one task at a time.
    progress = [line for line in lines if line.startswith("overall progress:")]
    assert progress[0] == "overall progress: 0 out of 3 tasks"
    assert [p for p in progress if p != progress[0]] == [
        f"overall progress: {n} out of 3 tasks" for n in (1, 2, 3)]
    assert any("runs the previous spec; waiting to be updated" in line for line in lines)
    assert lines[-1] == "verify: Service converged"

    # What apply reported is what runs: three new tasks, all on the new image.
    after = running(swctl, "my-web")
    assert sorted(after.values()) == ["shoal/busybox:2.0"] * 3
    assert not set(after) & set(before)
    # The old tasks were stopped by the update, not lost or scaled away.
    reasons = {t["metadata"]["name"]: t["metadata"].get("annotations", {}).get(
        "shoal.io/shutdown-reason") for t in tasks(swctl, "my-web")}
    assert {reasons[name] for name in before} == {"updating to service generation 2"}
    assert update_status(swctl, "my-web")["state"] == "completed"
    described = swctl("describe", "service", "my-web").stdout
    assert "update completed" in described


def test_bad_image_pauses_the_rollout_and_a_revert_converges(cluster: Cluster) -> None:
    swctl = cluster.swctl
    apply(swctl, "shop", manifest("shop"))
    old = running(swctl, "shop")

    # swctl apply -f shop.yaml   (image: shoal/missing:2.0 — no node has it)
    result = apply(swctl, "shop", manifest("shop", image="shoal/missing:2.0"), 1)
    assert result.stdout.splitlines()[0] == "service/shop configured"
    err = result.stderr
    # The updater's words (it keeps the service's status), as docker service update's.
    assert "service/shop: update paused due to failure of task shop.1.2 rejected on " \
           "node n-" in err
    assert "image not found: shoal/missing:2.0" in err
    # Paused: the other two slots still run the old spec, untouched.
    status = eventually(lambda: (lambda s: s if s.get("state") == "paused" else None)(
        update_status(swctl, "shop")), what="update paused")
    assert status["message"].startswith("update paused due to failure of task shop.1.")
    assert "image not found: shoal/missing:2.0" in status["message"]
    still = running(swctl, "shop")
    assert len(still) == 2 and set(still) <= set(old)
    assert "update paused due to failure" in swctl("describe", "service", "shop").stdout

    # Revert the image: converged once the current tasks run, and exit 0 — the rejected
    # tasks of the bad spec are not failures of this change.
    out = apply(swctl, "shop", manifest("shop")).stdout.splitlines()
    assert out[0] == "service/shop configured"
    assert out[-1] == "verify: Service converged"
    assert sorted(running(swctl, "shop").values()) == ["shoal/busybox:1.0"] * 3
    eventually(lambda: update_status(swctl, "shop").get("state") == "completed",
               what="update completed")


def test_replicas_only_change_replaces_nothing(cluster: Cluster) -> None:
    swctl = cluster.swctl
    apply(swctl, "api", manifest("api", replicas=2))
    before = running(swctl, "api")
    out = apply(swctl, "api", manifest("api", replicas=3)).stdout.splitlines()
    assert out[0] == "service/api configured" and out[-1] == "verify: Service converged"
    after = running(swctl, "api")
    assert len(after) == 3 and set(before) < set(after)
    assert update_status(swctl, "api") == {}


@pytest.mark.parametrize("change", [{"force": 1}, {"constraints": "node.role==worker"}])
def test_force_update_and_constraint_change_replace_every_task(cluster: Cluster,
                                                               change: dict[str, Any]) -> None:
    swctl = cluster.swctl
    name = "forced" if "force" in change else "placed"
    apply(swctl, name, manifest(name))
    before = running(swctl, name)
    # swctl apply -f forced.yaml   (forceUpdate: 1) / placed.yaml (a changed constraint)
    out = apply(swctl, name, manifest(name, **change)).stdout.splitlines()
    assert "overall progress: 1 out of 3 tasks" in out
    assert out[-1] == "verify: Service converged"
    after = running(swctl, name)
    assert len(after) == 3 and not set(after) & set(before)


def test_killed_controller_manager_resumes_the_rollout(cluster: Cluster) -> None:
    swctl = cluster.swctl
    apply(swctl, "batch", manifest("batch"))
    # swctl apply -f batch.yaml -d   (image: shoal/busybox:2.0), then kill -9 the
    # controller-manager once the first task is replaced, and start it again.
    apply(swctl, "batch", manifest("batch", image="shoal/busybox:2.0"), 0, "-d")

    def replaced() -> list[dict[str, Any]]:
        return [t for t in tasks(swctl, "batch")
                if t["spec"]["template"]["image"] == "shoal/busybox:2.0"]
    with Recorder(swctl, "batch") as rec:
        at_kill = len(eventually(replaced, what="a first task replaced"))
        cluster.procs["manager"].kill()
        cluster.procs["manager"].wait()
        cluster.start("manager", "controller-manager")

        eventually(lambda: sorted(running(swctl, "batch").values())
                   == ["shoal/busybox:2.0"] * 3, 30, "every task on the new image")
    # At every etcd revision across the kill: never two tasks desired running in a slot
    # (stop-first), never more than 3 desired running, never fewer than 3 - 1 running
    # once the update began.
    assert all(len(g) == 1 for m in rec.moments for g in m.per_slot.values())
    assert max(m.desired for m in rec.moments) <= 3
    assert min(m.serving for m in rec.moments) >= 2, [m.serving for m in rec.moments]
    # Exactly one replacement per slot: nothing was redone or lost across the kill.
    new = replaced()
    assert sorted(t["spec"]["slot"] for t in new) == [1, 2, 3], (at_kill, new)
    eventually(lambda: update_status(swctl, "batch").get("state") == "completed",
               what="update completed")


# --- spec.updateConfig: what every etcd revision shows during the rollout ---

TASKS_KIND = kinds.Registry.builtin().lookup("tasks")


@dataclasses.dataclass
class Moment:
    """The service's tasks at one etcd revision, as the recorder saw them."""

    at: float  # monotonic seconds
    desired: int  # tasks desired running
    serving: int  # ... and observed running
    per_slot: dict[int, list[int]]  # slot -> generations of its desired-running tasks


class Recorder:
    """Watches the service's tasks in etcd from a thread and keeps every revision.

    A watch misses nothing between two polls, so "never fewer than N running" is checked
    at every change the cluster went through, not at the moments a poll happened to look.
    """

    def __init__(self, swctl: Swctl, service: str) -> None:
        self.swctl, self.service = swctl, service
        self.moments: list[Moment] = []
        self.created: dict[str, float] = {}  # task name -> when it appeared
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        assert self._ready.wait(10), "recorder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # reported by __exit__, in the test's thread
            self.error = exc
            self._ready.set()

    async def _run(self) -> None:
        store = await client.Store.connect(self.swctl.etcd_url, prefix=self.swctl.prefix)
        try:
            prefix = store.kind_prefix(TASKS_KIND, "default")
            kvs, rev = await store.raw_list(prefix)
            tasks: dict[bytes, dict[str, Any]] = {kv.key: json.loads(kv.value) for kv in kvs}
            self._note(tasks)
            self._ready.set()
            # The watch runs as its own task: cancelling a pending ``__anext__`` (a
            # timeout around it) would close the stream.
            watching = asyncio.create_task(self._follow(store, prefix, rev + 1, tasks))
            await asyncio.to_thread(self._stop.wait)  # until the test is done
            if watching.done():
                watching.result()  # a broken watch fails the test rather than passing it
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        finally:
            await store.close()

    async def _follow(self, store: client.Store, prefix: bytes, rev: int,
                      tasks: dict[bytes, dict[str, Any]]) -> None:
        async for _, events in store.raw_watch(prefix, rev):
            for ev in events:
                if ev.deleted:
                    tasks.pop(ev.key, None)
                else:
                    tasks[ev.key] = json.loads(ev.value)
            if events:
                self._note(tasks)

    def _note(self, tasks: dict[bytes, dict[str, Any]]) -> None:
        now = time.monotonic()
        mine = [t for t in tasks.values() if t["spec"].get("serviceName") == self.service]
        per_slot: dict[int, list[int]] = {}
        desired = serving = 0
        for t in mine:
            self.created.setdefault(t["metadata"]["name"], now)
            if t["spec"].get("desiredState") != "running":
                continue
            desired += 1
            serving += (t.get("status") or {}).get("state") == "running"
            per_slot.setdefault(t["spec"]["slot"], []).append(t["spec"]["serviceGeneration"])
        self.moments.append(Moment(now, desired, serving, per_slot))

    def since(self, start: float) -> list[Moment]:
        return [m for m in self.moments if m.at >= start]


def generation_of(swctl: Swctl, service: str) -> int:
    obj = json.loads(swctl("get", "service", service, "-o", "json").stdout)
    return int(obj["metadata"]["generation"])


def test_parallelism_two_with_a_delay_replaces_two_tasks_per_batch(cluster: Cluster) -> None:
    swctl = cluster.swctl
    update = "parallelism: 2, delay: 2s"
    apply(swctl, "tiles", manifest("tiles", replicas=6, update=update))
    before = running(swctl, "tiles")
    # swctl apply -f tiles.yaml   (image: shoal/busybox:2.0, updateConfig: parallelism 2,
    # delay 2s) — docker service update --update-parallelism 2 --update-delay 2s
    with Recorder(swctl, "tiles") as rec:
        start = time.monotonic()
        out = apply(swctl, "tiles", manifest("tiles", image="shoal/busybox:2.0", replicas=6,
                                             update=update)).stdout.splitlines()
        assert out[-1] == "verify: Service converged"
    assert sorted(running(swctl, "tiles").values()) == ["shoal/busybox:2.0"] * 6
    gen = generation_of(swctl, "tiles")
    new = sorted((at, name) for name, at in rec.created.items()
                 if name not in before and at >= start)
    assert len(new) == 6, new
    # Three batches of two: each batch's two tasks appear together, 2 s after the last.
    batches = [new[i:i + 2] for i in (0, 2, 4)]
    for batch in batches:
        assert batch[1][0] - batch[0][0] < 1.0, batches
    for prev, nxt in itertools.pairwise(batches):
        assert nxt[0][0] - prev[1][0] >= 2.0, batches
    # Stop-first with parallelism 2: never fewer than 6 - 2 tasks running, never more
    # than 6 desired running, and never two in one slot (each old task is told to stop
    # in the transaction that creates its replacement).
    moments = rec.since(start)
    assert min(m.serving for m in moments) >= 4, [m.serving for m in moments]
    assert max(m.desired for m in moments) == 6
    assert all(len(g) == 1 for m in moments for g in m.per_slot.values())
    assert all(g == [gen] for g in moments[-1].per_slot.values())


def test_start_first_never_drops_below_replicas_nor_exceeds_replicas_plus_parallelism(
        cluster: Cluster) -> None:
    swctl = cluster.swctl
    update = "parallelism: 2, order: start-first"
    apply(swctl, "front", manifest("front", replicas=4, update=update))
    # swctl apply -f front.yaml   (image: shoal/busybox:2.0, order: start-first)
    with Recorder(swctl, "front") as rec:
        start = time.monotonic()
        out = apply(swctl, "front", manifest("front", image="shoal/busybox:2.0", replicas=4,
                                             update=update)).stdout.splitlines()
        assert out[-1] == "verify: Service converged"
        eventually(lambda: rec.moments[-1].desired == 4, what="the overlap ended")
    assert sorted(running(swctl, "front").values()) == ["shoal/busybox:2.0"] * 4
    moments = rec.since(start)
    # Every revision: at least 4 running, at most 4 + 2 desired running, and a slot holds
    # two tasks only across generations (the old one and its replacement).
    assert min(m.serving for m in moments) >= 4, [(m.desired, m.serving) for m in moments]
    assert max(m.desired for m in moments) == 6
    for m in moments:
        for gens in m.per_slot.values():
            assert len(gens) == len(set(gens)) <= 2, m
    reasons = {t["metadata"].get("annotations", {}).get("shoal.io/shutdown-reason")
               for t in tasks(swctl, "front") if t["spec"]["desiredState"] == "shutdown"}
    assert {r.split(" (")[1] if r else r for r in reasons} == {"start-first)"}, reasons


def test_failure_action_continue_goes_past_failed_tasks(cluster: Cluster) -> None:
    swctl = cluster.swctl
    # A long restart delay: each slot fails once within the test, not over and over.
    extra = {"update": "failureAction: continue", "restart": "delay: 60s"}
    apply(swctl, "feed", manifest("feed", **extra))
    # swctl apply -f feed.yaml -d   (image: shoal/missing:2.0, failureAction: continue)
    apply(swctl, "feed", manifest("feed", image="shoal/missing:2.0", **extra), 0, "-d")
    gen = generation_of(swctl, "feed")

    def every_slot_tried() -> set[int] | None:
        slots = {t["spec"]["slot"] for t in tasks(swctl, "feed")
                 if t["spec"]["serviceGeneration"] == gen
                 and t["status"].get("state") == "rejected"}
        return slots if slots == {1, 2, 3} else None
    eventually(every_slot_tried, 30, "a rejected task in every slot")
    status = eventually(lambda: (lambda s: s if s.get("state") == "completed" else None)(
        update_status(swctl, "feed")), what="update completed")
    assert status["message"] == "update completed"  # never paused on the way


def test_max_failure_ratio_tolerates_that_many_failures(cluster: Cluster) -> None:
    swctl = cluster.swctl
    extra = {"update": "maxFailureRatio: 0.5", "restart": "delay: 60s"}
    apply(swctl, "grid", manifest("grid", replicas=4, **extra))
    old = running(swctl, "grid")
    # swctl apply -f grid.yaml -d   (image: shoal/missing:2.0, maxFailureRatio: 0.5):
    # two failed tasks of four are tolerated, the third pauses the update.
    apply(swctl, "grid", manifest("grid", image="shoal/missing:2.0", replicas=4, **extra),
          0, "-d")
    status = eventually(lambda: (lambda s: s if s.get("state") == "paused" else None)(
        update_status(swctl, "grid")), 30, "update paused")
    assert status["message"].startswith("update paused due to failure of task grid.3.2 "
                                        "rejected on node n-"), status
    assert "image not found: shoal/missing:2.0" in status["message"]
    gen = generation_of(swctl, "grid")
    tried = sorted(t["spec"]["slot"] for t in tasks(swctl, "grid")
                   if t["spec"]["serviceGeneration"] == gen)
    assert tried == [1, 2, 3]
    # Slot 4 was never touched: it still runs its old task.
    still = running(swctl, "grid")
    assert list(still) == [name for name in old if name.startswith("grid.4.")]


def test_apply_waits_past_the_failures_the_update_tolerates(cluster: Cluster) -> None:
    swctl = cluster.swctl
    extra = {"update": "maxFailureRatio: 0.5", "restart": "delay: 60s"}
    apply(swctl, "tally", manifest("tally", replicas=4, **extra))
    # swctl apply -f tally.yaml   (image: shoal/missing:2.0, maxFailureRatio: 0.5), waiting:
    # the first two rejections are within the ratio, so apply keeps following the update
    # and reports the pause the orchestrator makes at the third, not the first failure.
    out = apply(swctl, "tally", manifest("tally", image="shoal/missing:2.0", replicas=4,
                                         **extra), 1)
    assert "service/tally: update paused due to failure of task tally.3.2 rejected " \
           "on node n-" in out.stderr, out.stderr
    status = eventually(lambda: (lambda s: s if s.get("state") == "paused" else None)(
        update_status(swctl, "tally")), 30, "update paused")
    assert status["message"].startswith("update paused due to failure of task tally.3.2 ")
