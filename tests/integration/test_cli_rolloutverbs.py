"""``swctl rollout ...`` and ``swctl service rollback`` as a user drives them: history
after three updates (with each command line as its change cause), undo to revision 1
(image back, replica count kept), an unknown revision refused with nothing written,
pause stops further replacements and resume continues, restart replaces every task
once, ``rollout status`` exit codes (paused, rolled back automatically, completed), and
the UPDATE and REVISION columns of ``get services -o wide``.

Real etcd, a real ``swctl controller-manager`` (orchestrator, scheduler, updater ...)
and a real hollow agent with three nodes (it rejects images whose name contains
``missing``), each a separate process, as in test_cli_rollout.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.store import etcd_server
from tests.helpers import eventually_sync as eventually
from tests.integration.cli_support import Cluster, Swctl, hollow_cluster
from tests.integration.test_cli_rollout import running, tasks, update_status

VERIFY = ("--verify-window", "0.3")
COMMAND = ("httpd", "-f", "-p", "8080")
# Swarm's 5 s monitor period is waited out after each rollout's last batch; no test here is
# about it (a rejected task counts as failed whenever it happens), so a short one saves
# seconds per update, rollback and restart.
MONITOR = ("--update-monitor", "0.5s", "--rollback-monitor", "0.5s")

MANIFEST = """\
apiVersion: shoal.io/v1
kind: Service
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  template: {{image: "{image}", command: [httpd, -f, -p, "8080"]}}
  updateConfig: {{{update}}}
"""


@pytest.fixture(scope="module")
def cluster(etcd: etcd_server.EtcdServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    swctl = Swctl(etcd.url, f"/t-{uuid.uuid4().hex[:12]}",
                  tmp_path_factory.mktemp("rolloutverbs"))
    with hollow_cluster(swctl, "--hollow-start-delay", "0.3") as c:
        yield c


def stored(swctl: Swctl, name: str) -> dict[str, Any]:
    return dict(json.loads(swctl("get", "service", name, "-o", "json").stdout))


def create(swctl: Swctl, name: str, image: str, replicas: int = 3, *flags: str) -> None:
    swctl("service", "create", *VERIFY, "--name", name, "--replicas", str(replicas), *MONITOR,
          *flags, image, *COMMAND, timeout=90)


def history(swctl: Swctl, name: str) -> list[list[str]]:
    """rollout history rows, split on the three-space column gaps."""
    lines = swctl("rollout", "history", f"service/{name}").stdout.splitlines()
    return [[cell.strip() for cell in line.split("   ") if cell.strip()]
            for line in lines]


def revisions_recorded(swctl: Swctl, name: str, count: int) -> None:
    eventually(lambda: len(stored(swctl, name)["status"].get("revisions") or []) == count,
               30, f"{count} revisions of {name}")


def test_history_after_three_updates_names_each_command(cluster: Cluster) -> None:
    swctl = cluster.swctl
    create(swctl, "hist", "shoal/busybox:1.0", 2)
    swctl("service", "update", *VERIFY, "--image", "shoal/busybox:2.0", "hist", timeout=90)
    path = swctl.write("hist.yaml", MANIFEST.format(
        name="hist", replicas=2, update="monitor: 0.5s", image="shoal/busybox:3.0"))
    out = swctl("apply", "-f", str(path), *VERIFY, timeout=90).stdout.splitlines()
    assert out[0] == "service/hist configured" and out[-1] == "verify: Service converged"
    revisions_recorded(swctl, "hist", 3)

    rows = history(swctl, "hist")
    assert rows[0] == ["REVISION", "CHANGE-CAUSE", "IMAGE", "CREATED"]
    assert [r[:3] for r in rows[1:]] == [
        ["1", "swctl service create --verify-window 0.3 --name hist --replicas 2 "
              "--update-monitor 0.5s --rollback-monitor 0.5s shoal/busybox:1.0 httpd -f -p "
              "8080", "shoal/busybox:1.0"],
        ["2", "swctl service update --verify-window 0.3 --image shoal/busybox:2.0 hist",
         "shoal/busybox:2.0"],
        ["3 (current)", f"swctl apply -f {path} --verify-window 0.3", "shoal/busybox:3.0"]]

    # One revision in full; an unknown one names those there are.
    shown = swctl("rollout", "history", "svc/hist", "--revision", "2").stdout
    assert "image: shoal/busybox:2.0" in shown and "revision: 2" in shown
    err = swctl("rollout", "history", "service/hist", "--revision", "9", expect=1).stderr
    assert err == ("error: service/hist has no revision 9: its revisions are 1, 2, 3 (see "
                   "swctl rollout history service/hist)\n")

    # The same manifest again is unchanged: the change cause does not count as a change.
    again = swctl("apply", "-f", str(path), *VERIFY, timeout=90).stdout.splitlines()
    assert again == ["service/hist unchanged"]

    # get -o wide: UPDATE and REVISION.
    wide = swctl("get", "services", "-o", "wide").stdout.splitlines()
    header = wide[0].split()
    row = next(line.split() for line in wide if line.startswith("hist "))
    assert row[header.index("UPDATE")] == "completed"
    assert row[header.index("REVISION")] == "3"
    pretty = swctl("service", "inspect", "--pretty", "hist").stdout
    assert "UpdateStatus:\n State:" in pretty and "update completed" in pretty
    described = swctl("describe", "service/hist").stdout
    assert "Revisions:" in described and "3 (current)" in described


def test_undo_to_revision_one_restores_the_image_and_keeps_the_replicas(
        cluster: Cluster) -> None:
    swctl = cluster.swctl
    create(swctl, "undo", "shoal/busybox:1.0", 2)
    swctl("service", "update", *VERIFY, "--image", "shoal/busybox:2.0", "undo", timeout=90)
    swctl("scale", *VERIFY, "undo=4", timeout=90)  # not a revision
    revisions_recorded(swctl, "undo", 2)

    # An unknown revision: a clear error, nothing written.
    version = stored(swctl, "undo")["metadata"]["resourceVersion"]
    err = swctl("rollout", "undo", "service/undo", "--to-revision", "5", expect=1).stderr
    assert err == ("error: service/undo has no revision 5: its revisions are 1, 2 (see "
                   "swctl rollout history service/undo)\n")
    assert stored(swctl, "undo")["metadata"]["resourceVersion"] == version

    out = swctl("rollout", "undo", "service/undo", "--to-revision", "1", *VERIFY,
                timeout=90).stdout.splitlines()
    assert out[0] == "service/undo rolling back to revision 1"
    assert out[1] == "rollback: manually requested rollback"
    assert out[-1] == "verify: Service converged"
    now = running(swctl, "undo")
    assert sorted(now.values()) == ["shoal/busybox:1.0"] * 4  # image back, 4 replicas kept
    svc = stored(swctl, "undo")
    assert svc["spec"]["replicas"] == 4
    assert "shoal.io/rollback-request" not in svc["metadata"].get("annotations", {})
    assert svc["status"]["update"]["state"] == "rollback_completed"
    swctl("rollout", "status", "service/undo", *VERIFY, timeout=60)  # exit 0


def test_service_rollback_prints_what_docker_prints(cluster: Cluster) -> None:
    swctl = cluster.swctl
    create(swctl, "back", "shoal/busybox:1.0", 2)
    swctl("service", "update", *VERIFY, "--image", "shoal/busybox:2.0", "back", timeout=90)
    revisions_recorded(swctl, "back", 2)
    out = swctl("service", "rollback", *VERIFY, "back", timeout=90).stdout.splitlines()
    assert out[0] == "back"
    assert out[1] == "rollback: manually requested rollback"
    assert any(line.startswith("overall progress: ") for line in out)
    assert out[-1] == "verify: Service converged"
    assert sorted(running(swctl, "back").values()) == ["shoal/busybox:1.0"] * 2
    # update --rollback is the same request: back to 2.0, the previous one now.
    revisions_recorded(swctl, "back", 2)
    out = swctl("service", "update", "--rollback", *VERIFY, "back", timeout=90).stdout
    assert out.splitlines()[-1] == "verify: Service converged"
    assert sorted(running(swctl, "back").values()) == ["shoal/busybox:2.0"] * 2


def test_pause_stops_further_replacements_and_resume_continues(cluster: Cluster) -> None:
    swctl = cluster.swctl
    create(swctl, "slow", "shoal/busybox:1.0", 3, "--update-delay", "8s")
    swctl("service", "update", "-d", "--image", "shoal/busybox:2.0", "slow")
    eventually(lambda: "shoal/busybox:2.0" in running(swctl, "slow").values(), 30,
               "the first task updated")
    assert swctl("rollout", "pause", "service/slow").stdout == "service/slow paused\n"
    eventually(lambda: update_status(swctl, "slow").get("state") == "paused", 30,
               "update paused")
    err = swctl("rollout", "status", "service/slow", "--timeout", "30s", expect=1).stderr
    assert "update paused by user" in err

    # Paused: once the task in flight runs, nothing more is replaced for several update
    # delays (a bounded watch that something does not happen, polled throughout).
    held = eventually(lambda: (lambda r: r if len(r) == 3 else None)(running(swctl, "slow")),
                      30, "the task in flight running")
    assert list(held.values()).count("shoal/busybox:1.0") >= 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert running(swctl, "slow") == held
        time.sleep(0.2)

    assert swctl("rollout", "resume", "service/slow").stdout == "service/slow resumed\n"
    out = swctl("rollout", "status", "service/slow", *VERIFY, timeout=90).stdout
    assert out.splitlines()[-1] == 'service "slow" successfully rolled out'
    assert sorted(running(swctl, "slow").values()) == ["shoal/busybox:2.0"] * 3


def test_restart_replaces_every_task_once(cluster: Cluster) -> None:
    swctl = cluster.swctl
    create(swctl, "rs", "shoal/busybox:1.0", 3)
    revisions_recorded(swctl, "rs", 1)
    before = running(swctl, "rs")
    assert swctl("rollout", "restart", "service/rs").stdout == "service/rs restarted\n"
    swctl("rollout", "status", "service/rs", *VERIFY, timeout=90)
    after = running(swctl, "rs")
    assert len(after) == 3 and not set(after) & set(before)
    # Once each: every slot holds exactly its first and its second task.
    names = sorted(t["metadata"]["name"] for t in tasks(swctl, "rs"))
    assert names == sorted(f"rs.{slot}.{n}" for slot in (1, 2, 3) for n in (1, 2))
    svc = stored(swctl, "rs")
    assert svc["metadata"]["annotations"]["shoal.io/change-cause"] == \
        "swctl rollout restart service/rs"
    assert len(svc["status"]["revisions"]) == 1  # a restart is not a revision


def test_rollout_status_exit_codes(cluster: Cluster) -> None:
    swctl = cluster.swctl
    # A bad image with failure action pause: exit 1 with the updater's message.
    create(swctl, "bad", "shoal/busybox:1.0", 2)
    swctl("service", "update", "-d", "--image", "shoal/missing:2.0", "bad")
    err = swctl("rollout", "status", "service/bad", "--timeout", "60s", expect=1,
                timeout=90).stderr
    assert err.startswith("error: service/bad: update paused due to failure of task bad.")
    # Undo: the asked-for rollback completes, status exits 0.
    swctl("rollout", "undo", "service/bad", *VERIFY, timeout=90)
    swctl("rollout", "status", "service/bad", *VERIFY, timeout=60)

    # Failure action rollback: the updater rolls back by itself; status exits 1.
    create(swctl, "auto", "shoal/busybox:1.0", 2, "--update-failure-action", "rollback")
    swctl("service", "update", "-d", "--image", "shoal/missing:2.0", "auto")
    err = swctl("rollout", "status", "service/auto", "--timeout", "60s", expect=1,
                timeout=90).stderr
    assert err.startswith("error: service/auto: service rolled back: ")
    assert sorted(running(swctl, "auto").values()) == ["shoal/busybox:1.0"] * 2
    wide = swctl("get", "services", "-o", "wide").stdout.splitlines()
    row = next(line for line in wide if line.startswith("auto "))
    assert "rollback_completed" in row
