"""The agent running tasks in the hollow runtime: states, shutdown, failures, garbage.

Tasks are written straight into etcd already assigned (as the scheduler commits them);
one agent process serves the node. Every status.state a task takes is recorded from a
watch, so "only forward" is checked on what etcd really held, not on a final snapshot.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from shoal.crds import resource
from shoal.store import client, etcd_server, projections
from tests.helpers import eventually
from tests.integration.agent_support import (
    TASKS,
    AgentCluster,
    StateRecorder,
    assert_forward_only,
    hollow_workloads,
)

IMAGE = {"image": "shoal/busybox", "command": ["httpd", "-f"]}


async def test_task_states_move_forward_to_running_then_shutdown(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    state_file = tmp_path / "hollow.state"
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        # A slow start shows the intermediate states (they linger 0.2 s before writing).
        c.start_agent("n1", "--hollow-start-delay", "0.6", "--hollow-state", str(state_file))
        await c.wait_ready(["n1"])
        async with StateRecorder(c.store) as rec:
            made = await c.create_task("web.1", "n1", IMAGE)
            running = await c.wait_state("web.1", "running")
            status = running.status
            assert status["message"] == "started"
            assert status["timestamp"].endswith("Z")
            assert len(status["containerId"]) == 64
            assert running.spec == made.spec, "the agent must never write spec"
            assert running.metadata.generation == made.metadata.generation
            workloads = hollow_workloads(state_file)
            assert set(workloads) == {made.metadata.uid}

            await c.set_desired("web.1", "shutdown")
            done = await c.wait_state("web.1", "shutdown")
            assert done.status["message"] == "shutdown"
            assert done.status["containerId"] == status["containerId"]
            await asyncio.sleep(0.2)  # let the last watch events arrive
        states = rec.seen["web.1"]
        assert_forward_only(states)
        assert states[0] == "assigned" and states[-1] == "shutdown"
        assert "starting" in states and "running" in states
        # Stopped, and kept (so its logs stay readable) until the task is deleted.
        assert hollow_workloads(state_file)[made.metadata.uid]["state"] == "exited"
        await c.store.delete(TASKS, "web.1")
        await eventually(lambda: _no_workloads(state_file), 10, what="workload removed")


async def _no_workloads(path: Path) -> bool:
    return not hollow_workloads(path)


async def test_bad_image_exit_code_and_unhealthy(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        c.start_agent("n1")
        await c.wait_ready(["n1"])
        async with StateRecorder(c.store) as rec:
            await c.create_task("bad.1", "n1", {"image": "registry.local/missing:1"})
            await c.create_task("exit.1", "n1", {"image": "busybox", "command": ["exit", "3"]})
            await c.create_task("done.1", "n1", {"image": "busybox",
                                                 "env": {"SHOAL_HOLLOW_EXIT": "0"}})
            await c.create_task("sick.1", "n1", {
                "image": "busybox", "env": {"SHOAL_HOLLOW_HEALTH": "unhealthy"},
                "healthcheck": {"test": ["CMD", "true"]}})
            bad = await c.wait_state("bad.1", "rejected")
            assert bad.status["message"] == "image not found: registry.local/missing:1"
            assert bad.status["err"] == bad.status["message"]
            failed = await c.wait_state("exit.1", "failed")
            assert failed.status["exitCode"] == 3
            assert failed.status["message"] == "task: non-zero exit (3)"
            complete = await c.wait_state("done.1", "complete")
            assert complete.status["exitCode"] == 0
            sick = await c.wait_state("sick.1", "failed")
            assert sick.status["message"] == "task: container unhealthy"
            await asyncio.sleep(0.2)
        for name in ("bad.1", "exit.1", "done.1", "sick.1"):
            assert_forward_only(rec.seen[name])
        assert "running" in rec.seen["exit.1"], "it ran, then exited"


async def test_tasks_of_other_nodes_are_left_alone(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        c.start_agent("n1")
        await c.wait_ready(["n1"])
        await c.create_task("other.1", "n2", IMAGE)
        await c.create_task("unassigned.1", "", IMAGE)
        await c.create_task("mine.1", "n1", IMAGE)
        await c.wait_state("mine.1", "running")
        await asyncio.sleep(0.3)
        assert (await c.task("other.1")).status == {"state": "assigned", "message": "scheduled"}
        assert (await c.task("unassigned.1")).status["state"] == "assigned"


async def test_garbage_tasks_are_rejected_and_the_agent_keeps_serving(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        agent = c.start_agent("n1")
        await c.wait_ready(["n1"])
        await c.create_task("str.1", "n1", "not a mapping")
        await c.create_task("none.1", "n1")  # nodeName matches, no template at all
        await c.create_task("noimage.1", "n1", {"command": ["x"]})
        await c.create_task("cmd.1", "n1", {"image": "busybox", "command": "sh -c x"})
        await c.create_task("grace.1", "n1", {"image": "busybox", "stopGracePeriod": "soon"})
        # Values no decoder could turn into a Task, written behind the store's back where
        # the agent reads its tasks (the store writes these projections with each Task).
        base = projections.node_tasks_prefix(c.prefix, "n1") + b"default/"
        await c.store.raw_put(base + b"junk.1", b"{not json")
        # Its spec is not a mapping: nobody can tell what to run.
        await c.store.raw_put(base + b"spec.1", json.dumps(
            {"kind": "Task", "metadata": {"name": "spec.1"},
             "spec": [{"nodeName": "n1"}]}).encode())
        await c.store.raw_put(base + b"status.1", json.dumps(
            {"kind": "Task", "metadata": {"name": "status.1", "uid": "u-status-1"},
             "spec": {"nodeName": "n1", "template": IMAGE, "desiredState": "running"},
             "status": "garbage"}).encode())

        for name, message in (
                ("str.1", 'invalid task: spec.template: must be a mapping, got string '
                          '"not a mapping"'),
                ("none.1", "invalid task: spec.template: must be a mapping, got missing"),
                ("noimage.1", "invalid task: spec.template.image: must be a non-empty string, "
                              "such as nginx:1.25"),
                ("cmd.1", 'invalid task: spec.template.command: must be a list of strings, '
                          'got string "sh -c x"')):
            rejected = await c.wait_state(name, "rejected")
            assert rejected.status["message"] == message
        grace = await c.wait_state("grace.1", "rejected")
        assert grace.status["message"].startswith(
            "invalid task: spec.template.stopGracePeriod: invalid duration")
        # A task whose status was garbage still runs (the agent reads no status there).
        report_key = projections.report_key(c.prefix, "n1", "default", "status.1")

        async def reported_running() -> bool:
            kv = await c.store.raw_get(report_key)
            found = projections.decode_report(kv.value) if kv is not None else None
            return found is not None and found[1].get("state") == "running"
        await eventually(reported_running, what="status.1 reported running")

        await c.create_task("good.1", "n1", IMAGE)
        await c.wait_state("good.1", "running")
        assert agent.alive()
        assert "skipping a Task whose value cannot be read" in agent.text()


async def test_many_tasks_racing_desired_state_changes_end_shut_down(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    # The agent's batched status writes and the test's spec writes hit the same tasks at
    # the same time: compare-and-swap conflicts must be resolved by re-reading, never by
    # losing the desired state or moving a status backwards.
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        c.start_agent("n1", "--hollow-start-delay", "0.2")
        await c.wait_ready(["n1"])
        names = [f"race.{i}" for i in range(200)]
        async with StateRecorder(c.store) as rec:
            await c.store.commit([client.Op("create", TASKS, _task(name)) for name in names[:100]])
            await c.store.commit([client.Op("create", TASKS, _task(name)) for name in names[100:]])
            rng = random.Random(3)

            async def shut_down_later(name: str) -> None:
                # Spread over the tasks' start-up: some accepted, some starting, some
                # running while their spec changes under the agent's status writes.
                await asyncio.sleep(rng.uniform(0.0, 0.6))
                await c.set_desired(name, "shutdown")

            await asyncio.gather(*(shut_down_later(name) for name in names))

            async def all_shut_down() -> bool:
                tasks, _ = await c.store.list(TASKS)
                return all(t.status.get("state") == "shutdown" for t in tasks)

            await eventually(all_shut_down, 20, what="200 tasks shut down")
            await asyncio.sleep(0.2)
        for name in names:
            assert_forward_only(rec.seen[name])


async def test_fail_rate_makes_running_tasks_fail(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        c.start_agent("n1", "--fail-rate", "1", "--seed", "7")
        await c.wait_ready(["n1"])
        async with StateRecorder(c.store) as rec:
            await c.create_task("flaky.1", "n1", IMAGE)
            failed = await c.wait_state("flaky.1", "failed")
            await asyncio.sleep(0.2)
        assert failed.status["exitCode"] == 1
        assert rec.seen["flaky.1"][-2:] == ["running", "failed"]


def _task(name: str) -> resource.Resource:
    obj = resource.new("Task", name, spec={"serviceName": "race", "nodeName": "n1",
                                           "desiredState": "running", "template": IMAGE})
    obj.status = {"state": "assigned"}
    return obj
