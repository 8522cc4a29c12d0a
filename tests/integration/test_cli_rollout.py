"""Changing a running service with ``swctl apply -f``: the tasks are replaced one by one
(Swarm's default update), apply says converged only once every task runs the new spec,
a bad image pauses the rollout and apply exits 1 with the reason, a revert converges, and
a replicas-only change replaces nothing.

Real etcd, a real ``swctl controller-manager`` and a real hollow agent with three nodes
(``swctl agent --runtime hollow``: it rejects images whose name contains ``missing``, as
a node without the image would), each a separate process, as in test_cli_orchestration.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from shoal.store import etcd_server
from tests.helpers import eventually_sync as eventually
from tests.integration.cli_support import Swctl, command

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
"""


def manifest(name: str, image: str = "shoal/busybox:1.0", replicas: int = 3, force: int = 0,
             constraints: str = "") -> str:
    return MY_WEB.format(name=name, image=image, replicas=replicas, force=force,
                         constraints=constraints)




class Cluster:
    """The module's processes: ``start`` one (again, after a kill) under a name."""

    def __init__(self, swctl: Swctl) -> None:
        self.swctl = swctl
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[Any] = []

    def start(self, name: str, *args: str) -> None:
        log = open(self.swctl.cwd / f"{name}.log", "ab")  # closed by the fixture
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(command(*args), env=self.swctl.env,
                                            cwd=self.swctl.cwd, stdout=log,
                                            stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def cluster(etcd: etcd_server.EtcdServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    prefix = f"/t-{uuid.uuid4().hex[:12]}"
    cwd = tmp_path_factory.mktemp("rollout")
    swctl = Swctl(etcd.url, prefix, cwd)
    c = Cluster(swctl)
    try:
        c.start("manager", "controller-manager")
        # Tasks take 0.3 s to start: long enough to catch a rollout half-way.
        c.start("agent", "agent", "--runtime", "hollow", "--count", "3", "--name", "n",
                "--hollow-start-delay", "0.3")

        def ready() -> bool:
            rows = swctl("node", "ls").stdout.splitlines()[1:]
            return sum("ready" in row.split() for row in rows) >= 3
        eventually(ready, 20, "3 hollow nodes ready")
        yield c
    finally:
        for proc in c.procs.values():
            proc.terminate()
        for proc in c.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in c.logs:
            log.close()


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
    assert "service/shop cannot converge: update paused: task shop.1.2 was rejected on " \
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
    at_kill = len(eventually(replaced, what="a first task replaced"))
    cluster.procs["manager"].kill()
    cluster.procs["manager"].wait()
    cluster.start("manager", "controller-manager")

    eventually(lambda: sorted(running(swctl, "batch").values()) == ["shoal/busybox:2.0"] * 3,
               30, "every task on the new image")
    # Exactly one replacement per slot: nothing was redone or lost across the kill.
    new = replaced()
    assert sorted(t["spec"]["slot"] for t in new) == [1, 2, 3], (at_kill, new)
    eventually(lambda: update_status(swctl, "batch").get("state") == "completed",
               what="update completed")
