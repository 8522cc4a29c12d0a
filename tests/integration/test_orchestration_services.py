"""Service lifecycle through the real controllers and hollow agents: scale up and down
(the most loaded nodes lose replicas first), restart policy limits, task history, and
deletion removing every task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.controllers import taskspec
from shoal.controllers.orchestrator import restart
from shoal.crds import taskstates as ts
from shoal.store import errors, etcd_server
from tests.helpers import eventually
from tests.integration.orchestration_support import REG, SERVICES, Cluster, describe

EVENTS = REG.lookup("events")


@pytest.fixture
async def cluster(etcd: etcd_server.EtcdServer, prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster.open(etcd.url, prefix, tmp_path) as c:
        yield c


async def test_scale_up_and_down_most_loaded_first(cluster: Cluster) -> None:
    cluster.start_agent("s", count=2)
    cluster.start_manager()
    await cluster.wait_ready(["s-0", "s-1"])
    await cluster.apply("web", {"replicas": 4, "template": {"image": "busybox"}})
    assert await cluster.wait_running("web", 4) == {"s-0": 2, "s-1": 2}

    # A third node joins; nothing moves to it, but the next replica lands there.
    cluster.start_agent("t")
    await cluster.wait_ready(["t"])
    await cluster.scale("web", 5)
    assert await cluster.wait_running("web", 5) == {"s-0": 2, "s-1": 2, "t": 1}
    slots = sorted(ts.slot_of(t) for t in await cluster.current("web"))
    assert slots == [1, 2, 3, 4, 5]

    # Scale down to 3: the two nodes holding two replicas each lose one.
    await cluster.scale("web", 3)
    assert await cluster.wait_running("web", 3) == {"s-0": 1, "s-1": 1, "t": 1}
    # Scale up again: the lowest free slots are reused.
    await cluster.scale("web", 5)
    await cluster.wait_running("web", 5)
    assert sorted(ts.slot_of(t) for t in await cluster.current("web")) == [1, 2, 3, 4, 5]


async def test_restart_policy_max_attempts_and_history(cluster: Cluster) -> None:
    cluster.start_agent("r", count=2)
    cluster.start_manager()
    await cluster.wait_ready(["r-0", "r-1"])
    # Exits 1 as soon as it runs; restarted at most twice per slot, without delay.
    await cluster.apply("crash", {"replicas": 2, "template": {"image": "busybox",
                                                              "command": ["false"]},
                                  "restartPolicy": {"condition": "on-failure",
                                                    "delay": "0s", "maxAttempts": 2},
                                  "taskHistoryLimit": 5})

    async def given_up() -> list[str]:
        tasks = await cluster.tasks("crash")
        done = [t for t in tasks if restart.NO_RESTART in t.metadata.annotations]
        return [t.name for t in done] if len(done) == 2 else []
    await eventually(given_up, 20, what="restart limit reached in both slots")
    tasks = await cluster.tasks("crash")
    for slot in (1, 2):
        in_slot = [t for t in tasks if ts.slot_of(t) == slot]
        # The first task and its two restarts; all failed, none desired running.
        assert len(in_slot) == 3, describe(tasks)
        assert all(t.status.get("state") == "failed" for t in in_slot), describe(tasks)
        assert not any(ts.is_active_desired(t) for t in in_slot), describe(tasks)
        last = max(in_slot, key=taskspec.sequence_of)
        assert last.metadata.annotations[restart.RESTART_COUNT] == "2"
        assert "restart limit reached: 2 of 2" in last.metadata.annotations[
            restart.NO_RESTART]
    # Every failure is an Event on its task (what `get events -w` shows as it happens).
    failed = {t.name for t in tasks}

    async def failures_recorded() -> bool:
        found, _ = await cluster.store.list(EVENTS)
        named = {e.spec["involvedObject"]["name"] for e in found
                 if e.spec.get("reason") == "TaskFailed"
                 and "failed on node r-" in str(e.spec.get("message"))}
        return failed <= named
    await eventually(failures_recorded, 10, what="a TaskFailed event per failed task")

    # A new spec version gets a fresh start; history beyond the limit is deleted.
    await cluster.apply("crash", {"replicas": 1, "template": {"image": "busybox",
                                                              "command": ["false"]},
                                  "restartPolicy": {"condition": "any", "delay": "0s",
                                                    "maxAttempts": 4},
                                  "taskHistoryLimit": 2})

    async def trimmed() -> bool:
        tasks = await cluster.tasks("crash")
        slot1 = [t for t in tasks if ts.slot_of(t) == 1]
        return (not any(ts.slot_of(t) == 2 for t in tasks)
                and any(restart.NO_RESTART in t.metadata.annotations
                        and ts.generation_of(t) == 2 for t in slot1)
                and len(slot1) == 2)
    await eventually(trimmed, 20, what="restarts of generation 2 done, history trimmed")


async def test_deleting_a_service_removes_its_tasks(cluster: Cluster) -> None:
    cluster.start_agent("x", count=2)
    cluster.start_manager()
    await cluster.wait_ready(["x-0", "x-1"])
    await cluster.apply("gone", {"replicas": 4, "template": {"image": "busybox"}})
    await cluster.apply("kept", {"replicas": 1, "template": {"image": "busybox"}})
    await cluster.wait_running("gone", 4)
    svc = await cluster.store.get(SERVICES, "gone", "default")
    assert "shoal.io/tasks" in svc.metadata.finalizers

    await cluster.store.delete(SERVICES, "gone", "default")

    async def gone() -> bool:
        try:
            await cluster.store.get(SERVICES, "gone", "default")
            return False
        except errors.NotFoundError:
            return not await cluster.tasks("gone")
    await eventually(gone, 15, what="service and all its tasks deleted")
    assert await cluster.wait_running("kept", 1)
