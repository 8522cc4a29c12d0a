"""An agent killed with SIGKILL and started again adopts its workloads and cleans up.

The hollow runtime keeps its fake workloads in a state file (``--hollow-state``), the way
dockerd keeps containers running when the docker-driver agent dies. After a restart the
agent must not start a second workload for any task (the containerId stays the same and
the journal shows one start per task), must stop and remove the workloads of tasks that
were deleted meanwhile, and must stop the ones whose tasks are now desired shut down.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from shoal.store import etcd_server
from tests.helpers import eventually
from tests.integration.agent_support import (
    TASKS,
    AgentCluster,
    StateRecorder,
    assert_forward_only,
    hollow_workloads,
)

IMAGE = {"image": "shoal/busybox"}


async def test_restarted_agent_adopts_and_cleans_up(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    state_file = tmp_path / "hollow.state"
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        first = c.start_agent("n1", "--hollow-state", str(state_file))
        await c.wait_ready(["n1"])
        names = [f"web.{i}" for i in range(1, 7)]
        for name in names:
            await c.create_task(name, "n1", IMAGE)
        before = {name: (await c.wait_state(name, "running")) for name in names}
        uids = {name: t.metadata.uid for name, t in before.items()}
        assert set(hollow_workloads(state_file)) == set(uids.values())

        first.signal(signal.SIGKILL)
        await first.wait()
        # While the agent is down: one task deleted, one told to shut down, one new.
        await c.store.delete(TASKS, "web.1")
        await c.set_desired("web.2", "shutdown")
        await c.create_task("web.7", "n1", IMAGE)

        async with StateRecorder(c.store) as rec:
            c.start_agent("n1", "--hollow-state", str(state_file))
            await c.wait_state("web.2", "shutdown", timeout=20)
            await c.wait_state("web.7", "running", timeout=20)

            async def cleaned() -> bool:
                return uids["web.1"] not in hollow_workloads(state_file)

            await eventually(cleaned, 10, what="workload of the deleted task removed")
            await asyncio.sleep(0.3)  # anything the agent would still (wrongly) write

        workloads = hollow_workloads(state_file)
        for name in names[2:]:
            after = await c.task(name)
            assert after.status["state"] == "running"
            assert after.status["containerId"] == before[name].status["containerId"], name
            assert workloads[uids[name]]["starts"] == 1, f"{name} was started again"
            assert workloads[uids[name]]["workload_id"] == after.status["containerId"]
            # Its state never left running. (The task may still be written: when the
            # restart outlasts the heartbeat TTL -- under load -- the nodes controller
            # marks the down node's tasks NodeReachable=False and unmarks them on its
            # return; that changes a condition, never the state.)
            assert rec.seen.get(name, ["running"]) == ["running"], (
                f"{name} moved from running: {rec.seen.get(name)}")
        assert workloads[uids["web.2"]]["state"] == "exited"
        assert_forward_only(rec.seen["web.2"])
        assert_forward_only(rec.seen["web.7"])
        assert len(workloads) == 6  # web.2 (stopped) .. web.7


async def test_count_serves_many_nodes_from_one_process(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        c.start_agent("h", "--count", "50", "--label", "pool=hollow")
        names = [f"h-{i}" for i in range(50)]
        await c.wait_ready(names)
        beats = await c.heartbeats()
        assert len({lease for _, lease in beats.values()}) == 50, "one lease per node"
        for i in (0, 7, 23, 49):
            await c.create_task(f"svc.{i}", f"h-{i}", IMAGE)
        await c.create_task("nobody.1", "h-50", IMAGE)  # no such node in this process
        for i in (0, 7, 23, 49):
            await c.wait_state(f"svc.{i}", "running")
        assert (await c.task("nobody.1")).status["state"] == "assigned"
