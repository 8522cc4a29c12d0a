"""End to end: Docker's rolling-update tutorial and what Swarm users do after it, typed
as a Swarm user types them, translated to ``swctl``.

The cluster is ``swctl up -d --nodes 3`` (``upcluster``: three network namespaces, one
docker agent each, real containers). In order, as a user would:

1. the tutorial: a 2-replica service with ``--update-parallelism 2 --update-delay``,
   scaled to 6, then ``--image`` changed: three batches of two, the delay between
   them, and ``service ps`` showing the old tasks as Shutdown history;
2. ``service update --rollback``: the previous image again, by ``--rollback-*``;
3. an update to an image that cannot start pauses with the task's error in
   ``describe``; with ``--update-failure-action rollback`` it rolls back by itself;
4. ``rollout undo --to-revision 1`` after three updates, with a scale in between that
   the undo keeps (Swarm's rollback would restore the old replica count).

Every step checks what swctl printed and what dockerd actually runs (containers of the
service's tasks, their image and environment). Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from shoal.agent.exec.executor import LABEL_NODE, LABEL_SERVICE
from tests.e2e import upcluster
from tests.e2e.test_tutorial_swarm import current_tasks, row, table
from tests.e2e.upcluster import Cluster, until

pytestmark = pytest.mark.timeout(300)

OLD = "shoal/busybox:redis-306"  # the tutorial's redis:3.0.6 and 3.0.7: two tags of
NEW = "shoal/busybox:redis-307"  # the test image, as no registry is reachable here
MISSING = "shoal/not-built-here:1"  # no such image and no registry: it cannot start
# `sleep 3600` that ends when told to stop: as PID 1, sleep ignores SIGTERM, and every
# stop (update batch, drain, move, rm) would wait out the grace period instead.
SLEEP = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
DELAY = 3  # the tutorial's --update-delay 1m05s, shortened
WAIT = ("--timeout", "120s", "--verify-window", "0.5")
# Swarm's 5 s monitor period is waited out after each rollout's last batch; these steps
# are not about it (the bad image is rejected at once, a failure whenever it comes), so a
# short one keeps every update and rollback seconds quicker.
MONITOR = ("--update-monitor", "1s", "--rollback-monitor", "1s")


def _tag(docker: Any) -> None:
    for name in (OLD, NEW):
        docker.images.get("shoal/busybox").tag(name)


def _untag(docker: Any) -> None:
    for name in (OLD, NEW):
        with contextlib.suppress(Exception):  # never tagged, or already gone: harmless
            docker.images.remove(name, noprune=True)


@pytest.fixture(scope="module")
async def cluster(docker_client: Any, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    tag = "r" + secrets.token_hex(3)
    _tag(docker_client)
    try:
        async with upcluster.started(docker_client, tag, tmp_path_factory.mktemp("updates"),
                                     request) as c:
            yield c
    finally:
        _untag(docker_client)


def running(c: Cluster, service: str) -> list[Any]:
    """The service's containers dockerd runs on this cluster's nodes."""
    return [x for x in c.containers(**{LABEL_SERVICE: service})
            if x.status == "running" and x.labels.get(LABEL_NODE) in c.nodes]


def images(c: Cluster, service: str) -> list[str]:
    return sorted(x.attrs["Config"]["Image"] for x in running(c, service))


def service_json(c: Cluster, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(c.swctl("get", "service", name, "-o", "json").stdout)
    return data


def tasks_json(c: Cluster, service: str) -> list[dict[str, Any]]:
    items = json.loads(c.swctl("get", "tasks", "-o", "json").stdout)["items"]
    return [t for t in items if t["spec"]["serviceName"] == service]


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def batches(created: list[float], gap: float = 1.5) -> list[list[float]]:
    """Creation times grouped into batches: a new batch where the gap to the previous
    task exceeds ``gap`` seconds (one batch is created in one pass, within a second,
    and whole-second stamps of batches DELAY apart differ by at least DELAY - 1)."""
    out: list[list[float]] = []
    for t in sorted(created):
        if out and t - out[-1][-1] <= gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def printed(out: subprocess.CompletedProcess[str], *lines: str) -> None:
    got = [line.strip() for line in out.stdout.splitlines()]
    for line in lines:
        assert line in got, f"{line!r} not printed:\n{out.stdout}\n{out.stderr}"


# --- Step 1: the tutorial's rolling update ---

async def test_rolling_update_in_batches(cluster: Cluster) -> None:
    c = cluster
    # docker service create --replicas 2 --name redis --update-parallelism 2 \
    #     --update-delay 1m05s --rollback-parallelism 3 --rollback-delay 4s redis:3.0.6
    out = c.swctl("service", "create", "--replicas", "2", "--name", "redis",
                  "--update-parallelism", "2", "--update-delay", f"{DELAY}s",
                  "--rollback-parallelism", "3", "--rollback-delay", f"{DELAY}s",
                  "--stop-grace-period", "1s", *MONITOR, *WAIT, OLD, *SLEEP, timeout=150)
    printed(out, "verify: Service converged")
    assert images(c, "redis") == [OLD] * 2
    # docker service scale redis=6
    out = c.swctl("service", "scale", "redis=6", *WAIT, timeout=150)
    printed(out, "verify: Service converged")
    assert images(c, "redis") == [OLD] * 6
    before = {x.id for x in running(c, "redis")}

    # docker service update --image redis:3.0.7 redis
    out = c.swctl("service", "update", "--image", NEW, "redis", *WAIT, timeout=150)
    printed(out, "overall progress: 6 out of 6 tasks", "verify: Service converged")
    now = running(c, "redis")
    assert images(c, "redis") == [NEW] * 6 and not before & {x.id for x in now}

    # Three batches of two, DELAY apart: the new tasks' creation times say so.
    generation = service_json(c, "redis")["metadata"]["generation"]
    created = [_stamp(t["metadata"]["creationTimestamp"]) for t in tasks_json(c, "redis")
               if t["spec"]["serviceGeneration"] == generation]
    groups = batches(created)
    assert [len(g) for g in groups] == [2, 2, 2], groups
    for earlier, later in itertools.pairwise(groups):
        # (stamps have whole seconds: a gap of DELAY may read one second short)
        assert later[0] - earlier[-1] >= DELAY - 1, groups

    # docker service ps redis: the new tasks, and the old ones as Shutdown history.
    ps = c.swctl("service", "ps", "redis").stdout
    current = current_tasks(ps)
    assert sorted(r["IMAGE"] for r in current) == [NEW] * 6, ps
    history = [r for r in table(ps) if r["NAME"].startswith("\\_")]
    assert len(history) == 6 and {r["IMAGE"] for r in history} == {OLD}, ps
    assert {r["DESIRED STATE"] for r in history} == {"Shutdown"}, ps
    status = service_json(c, "redis")["status"]["update"]
    assert status["state"] == "completed" and status.get("completedAt"), status


# --- Step 2: roll back by hand ---

async def test_manual_rollback_uses_rollback_config(cluster: Cluster) -> None:
    c = cluster
    # docker service update --rollback redis
    out = c.swctl("service", "update", "--rollback", "redis", *WAIT, timeout=150)
    printed(out, "rollback: manually requested rollback", "verify: Service converged")
    assert images(c, "redis") == [OLD] * 6
    svc = service_json(c, "redis")
    assert svc["spec"]["replicas"] == 6
    assert svc["status"]["update"]["state"] == "rollback_completed", svc["status"]["update"]
    # --rollback-parallelism 3 --rollback-delay: two batches of three.
    generation = svc["metadata"]["generation"]
    created = [_stamp(t["metadata"]["creationTimestamp"]) for t in tasks_json(c, "redis")
               if t["spec"]["serviceGeneration"] == generation]
    assert [len(g) for g in batches(created)] == [3, 3], created


# --- Step 3: an image that cannot start ---

async def test_failed_update_pauses_with_the_task_error(cluster: Cluster) -> None:
    c = cluster
    # docker service update --image <an image no node can get> redis
    out = c.swctl("service", "update", "--image", MISSING, "redis", *WAIT, expect=1,
                  timeout=150)
    assert "update paused due to failure of task redis." in out.stdout + out.stderr, (
        out.stdout + out.stderr)
    svc = service_json(c, "redis")
    update = svc["status"]["update"]
    assert update["state"] == "paused", update
    # docker service inspect --pretty shows the message; describe names task and error.
    described = c.swctl("describe", "service", "redis").stdout
    failed = [t for t in tasks_json(c, "redis")
              if t["spec"]["template"]["image"] == MISSING
              and t["status"].get("state") in ("rejected", "failed")]
    assert failed, tasks_json(c, "redis")
    assert "update paused due to failure of task" in described, described
    assert any(t["metadata"]["name"] in described for t in failed), described
    error = str(failed[0]["status"].get("err") or "")
    assert error and error.splitlines()[0][:40] in described, (error, described)
    # The pause stopped the update after its first batch: the others still run OLD.
    assert images(c, "redis").count(OLD) >= 6 - 2, images(c, "redis")
    wide = c.swctl("get", "services", "-o", "wide").stdout
    assert row(wide, "NAME", "redis")["UPDATE"] == "paused", wide

    # Back to where it was, for the next step.
    c.swctl("service", "update", "--rollback", "redis", *WAIT, timeout=150)
    assert images(c, "redis") == [OLD] * 6


async def test_failure_action_rollback_rolls_back_by_itself(cluster: Cluster) -> None:
    c = cluster
    # docker service update --update-failure-action rollback --image <bad> redis
    out = c.swctl("service", "update", "--update-failure-action", "rollback",
                  "--image", MISSING, "redis", *WAIT, expect=1, timeout=150)
    assert "rolled back" in out.stdout + out.stderr, out.stdout + out.stderr

    def rolled_back() -> bool:
        return (service_json(c, "redis")["status"]["update"]["state"]
                == "rollback_completed" and images(c, "redis") == [OLD] * 6)
    await until(rolled_back, 90, "redis rolled back to its image by itself")
    svc = service_json(c, "redis")
    assert svc["spec"]["template"]["image"] == OLD and svc["spec"]["replicas"] == 6
    # The service runs, but not what was asked for: get services says why.
    wide = c.swctl("get", "services", "-o", "wide").stdout
    line = row(wide, "NAME", "redis")
    assert line["UPDATE"] == "rollback_completed", wide
    assert "rolled back" in line["ERROR"], wide
    c.swctl("service", "rm", "redis")
    await until(lambda: not running(c, "redis"), 60, "redis removed")


# --- Step 4: revision history, and undo to the first revision ---

async def test_undo_to_revision_one_after_three_updates(cluster: Cluster) -> None:
    c = cluster

    def env(service: str) -> list[str]:
        return sorted(e for x in running(c, service) for e in x.attrs["Config"]["Env"]
                      if e.startswith("V="))
    c.swctl("service", "create", "--name", "web", "--replicas", "3", "--env", "V=1",
            "--update-parallelism", "0", "--stop-grace-period", "1s", *MONITOR, *WAIT, OLD,
            *SLEEP, timeout=150)
    for value in ("2", "3", "4"):
        c.swctl("service", "update", "--env-add", f"V={value}", "web", *WAIT, timeout=150)
        if value == "2":
            c.swctl("service", "scale", "web=4", *WAIT, timeout=150)
    assert env("web") == ["V=4"] * 4
    history = c.swctl("rollout", "history", "service/web").stdout
    causes = [r["CHANGE-CAUSE"] for r in table(history)]
    assert [r["REVISION"] for r in table(history)] == ["1", "2", "3", "4 (current)"], history
    assert causes[2].startswith("swctl service update --env-add V=3 web"), history
    first = c.swctl("rollout", "history", "service/web", "--revision", "1").stdout
    assert "V=1" in first or "value: '1'" in first or "V: '1'" in first, first

    # kubectl rollout undo service/web --to-revision 1
    out = c.swctl("rollout", "undo", "service/web", "--to-revision", "1", *WAIT, timeout=150)
    printed(out, "verify: Service converged")
    assert env("web") == ["V=1"] * 4  # the first revision's env, and still 4 replicas
    assert service_json(c, "web")["spec"]["replicas"] == 4
    after = table(c.swctl("rollout", "history", "service/web").stdout)
    # kubectl's renumbering: revision 1 is now the newest, 5.
    assert [r["REVISION"] for r in after] == ["2", "3", "4", "5 (current)"], after
    c.swctl("service", "rm", "web")
    await until(lambda: not running(c, "web"), 60, "web removed")
