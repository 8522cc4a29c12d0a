"""The docker driver against a real dockerd and the real ``shoal/busybox`` image."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.docker.driver import DockerExecutor
from shoal.agent.docker.image import ensure_test_image
from shoal.agent.exec.executor import (
    LABEL_NAMESPACE,
    LABEL_NODE,
    LABEL_SERVICE,
    LABEL_TASK,
    LABEL_TASK_UID,
    LogLine,
    Observed,
    TaskRejectedError,
    TaskSpec,
)
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(120)


def make_task(node: str, template: dict[str, Any], service: str = "web") -> TaskSpec:
    uid = uuid.uuid4().hex
    return TaskSpec(uid=uid, name=f"{service}.1.{uid[:12]}", namespace="default",
                    service=service, node=node, slot=1,
                    template={"image": "shoal/busybox", **template})


@pytest.fixture
async def driver(docker_node: str) -> AsyncIterator[DockerExecutor]:
    ex = DockerExecutor(docker_node)
    yield ex
    await ex.close()


async def run(driver: DockerExecutor, template: dict[str, Any]) -> tuple[TaskSpec, Observed]:
    task = make_task(driver.node, template)
    await driver.prepare(task)
    return task, await driver.start(task)


def prepare_bind_source(path: Path) -> None:
    (path / "hello.txt").write_text("from the host\n")
    path.chmod(0o755)  # user nobody reads it through the bind mount


async def collect(driver: DockerExecutor, uid: str, **kwargs: Any) -> list[LogLine]:
    return [line async for line in driver.logs(uid, **kwargs)]


async def exited(driver: DockerExecutor, uid: str) -> Observed:
    async def probe() -> Observed | None:
        observed = await driver.observe(uid)
        return observed if observed.state == "exited" else None
    return await eventually(probe, timeout=15, what=f"task {uid} exited")


def test_image_build_is_idempotent(docker_client: Any) -> None:
    name = f"shoal/busybox-test{uuid.uuid4().hex[:6]}"
    try:
        assert ensure_test_image(docker_client, name) is True
        first = docker_client.images.get(name).id
        assert ensure_test_image(docker_client, name) is False
        assert docker_client.images.get(name).id == first
        config = docker_client.images.get(name).attrs["Config"]
        assert config["Cmd"] == ["sh"]
        assert any(e.startswith("PATH=") for e in config["Env"])
        output = docker_client.containers.run(
            name, ["sh", "-c", "hostname >/dev/null && httpd --help >/dev/null 2>&1; "
                   "for a in nc nslookup sleep; do command -v $a; done; id nobody"],
            network_mode="none", remove=True)
        lines = output.decode().splitlines()
        assert [line.rsplit("/", 1)[-1] for line in lines[:3]] == ["nc", "nslookup", "sleep"]
        assert lines[3].startswith("uid=65534(nobody)")
    finally:
        docker_client.images.remove(name, force=True)


async def test_start_observe_logs_labels_and_config(driver: DockerExecutor, docker_client: Any,
                                                    tmp_path: Path) -> None:
    prepare_bind_source(tmp_path)
    task, observed = await run(driver, {
        "command": ["sh", "-c", 'echo "$FOO $(pwd) $(id -u) $(hostname)"; echo oops >&2; '
                                "cat /data/hello.txt; trap 'exit 5' USR1; sleep 1000 & wait"],
        "env": {"FOO": "bar"}, "workdir": "/tmp", "user": "nobody", "hostname": "myhost",
        "labels": {"team": "blue", LABEL_NODE: "forged"},
        "mounts": [{"type": "bind", "source": str(tmp_path), "target": "/data",
                    "readOnly": True},
                   {"type": "tmpfs", "target": "/scratch"},
                   {"type": "volume", "target": "/anon"}],
        "resources": {"limits": {"cpus": 0.5, "memory": "64Mi"},
                      "reservations": {"memory": "16Mi"}},
        "stopSignal": "SIGUSR1", "stopGracePeriod": "3s",
    })
    assert observed.state == "running" and observed.pid and observed.health == "none"
    # start is idempotent: the same container, not a second one
    again = await driver.start(task)
    assert again.workload_id == observed.workload_id
    assert len(docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_TASK_UID}={task.uid}"})) == 1

    async def printed() -> list[LogLine] | None:
        lines = await collect(driver, task.uid, timestamps=True)
        return lines if len(lines) >= 3 else None
    lines = await eventually(printed, timeout=10, what="log lines")
    assert any(line.stream == "stdout" and line.line == b"bar /tmp 65534 myhost"
               for line in lines)
    assert any(line.stream == "stderr" and line.line == b"oops" for line in lines)
    assert any(line.line == b"from the host" for line in lines)
    assert all(line.timestamp and abs(line.timestamp - time.time()) < 60 for line in lines)
    tail = await collect(driver, task.uid, tail=1)
    assert len(tail) == 1 and tail[0].timestamp is None

    container = docker_client.containers.get(observed.workload_id)
    labels = container.labels
    assert labels[LABEL_TASK_UID] == task.uid and labels[LABEL_TASK] == task.name
    assert labels[LABEL_NODE] == driver.node  # Shoal's labels win over the template's
    assert labels[LABEL_SERVICE] == "web" and labels[LABEL_NAMESPACE] == "default"
    assert labels["team"] == "blue"
    assert container.name == task.name
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert container.attrs["Config"]["NetworkDisabled"] is True  # no libnetwork sandbox
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["MemoryReservation"] == 16 * 1024 * 1024
    assert container.attrs["Config"]["StopSignal"] == "SIGUSR1"
    assert container.attrs["Config"]["StopTimeout"] == 3
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/data"]["Type"] == "bind" and mounts["/data"]["RW"] is False
    assert mounts["/anon"]["Type"] == "volume"
    assert "/scratch" in {m["Target"] for m in host["Mounts"] if m["Type"] == "tmpfs"}
    # network mode none: loopback only
    code, output = container.exec_run(["ip", "-o", "link"])
    assert code == 0
    assert [line.split(":")[1].strip() for line in output.decode().splitlines()] == ["lo"]
    volume = mounts["/anon"]["Name"]

    t0 = time.monotonic()
    await driver.stop(task.uid, grace=5)  # the stopSignal, SIGUSR1, is trapped: exit 5
    assert time.monotonic() - t0 < 3
    assert (await driver.observe(task.uid)).exit_code == 5
    await driver.remove(task.uid)
    assert (await driver.observe(task.uid)).state == "missing"
    assert not docker_client.volumes.list(filters={"name": volume})  # anonymous: removed
    await driver.remove(task.uid)  # removing nothing is fine


async def test_init_capabilities_sysctls_and_ulimits_reach_the_container(
        driver: DockerExecutor, docker_client: Any) -> None:
    # What the workload itself sees, printed to its log: its pid 1, its capability
    # bounding set, a namespaced kernel parameter, its open-files limit.
    task, observed = await run(driver, {
        "command": ["sh", "-c", "cat /proc/1/comm; grep CapBnd /proc/self/status; "
                                "cat /proc/sys/net/core/somaxconn; "
                                "grep 'Max open files' /proc/self/limits; sleep 1000"],
        "init": True, "capAdd": ["sys_time"], "capDrop": ["CAP_NET_RAW"],
        "sysctls": {"net.core.somaxconn": 1234},
        "ulimits": {"nofile": {"soft": 1000, "hard": 2000}},
    })
    assert observed.state == "running"

    async def printed() -> list[str] | None:
        lines = [line.line.decode() for line in await collect(driver, task.uid)]
        return lines if len(lines) >= 4 else None
    comm, capbnd, somaxconn, nofile = (await eventually(printed, timeout=10,
                                                        what="the task's report"))[:4]
    assert comm == "docker-init"
    bounding = int(capbnd.split()[1], 16)
    assert not bounding & (1 << 13)  # CAP_NET_RAW, in Docker's default set, dropped
    assert bounding & (1 << 25)  # CAP_SYS_TIME, not in it, added
    assert bounding & (1 << 0)  # CAP_CHOWN: the rest of the default set stays
    assert somaxconn == "1234"
    assert nofile.split()[3:5] == ["1000", "2000"]
    host = docker_client.containers.get(observed.workload_id).attrs["HostConfig"]
    assert host["Init"] is True
    assert (host["CapAdd"], host["CapDrop"]) == (["CAP_SYS_TIME"], ["CAP_NET_RAW"])


async def test_stop_honours_grace_then_kills(driver: DockerExecutor) -> None:
    stubborn, _ = await run(driver, {"command": ["sh", "-c", "trap '' TERM; sleep 1000"]})
    polite, _ = await run(driver, {"command": ["sh", "-c", "trap 'exit 7' USR2; "
                                                           "while :; do sleep 0.05; done"]})
    t0 = time.monotonic()
    await driver.stop(stubborn.uid, grace=1.5)
    elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed < 5, elapsed
    assert (await driver.observe(stubborn.uid)).exit_code == 137
    t0 = time.monotonic()
    await driver.stop(polite.uid, grace=10, signal="SIGUSR2")
    assert time.monotonic() - t0 < 3
    observed = await driver.observe(polite.uid)
    assert (observed.state, observed.exit_code) == ("exited", 7)
    await driver.stop(polite.uid, grace=10)  # stopping a stopped task is fine


async def test_exit_code_and_changes(driver: DockerExecutor) -> None:
    seen: list[str] = []

    async def listen() -> None:
        async for uid in driver.changes():
            seen.append(uid)
    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0.3)  # let the event stream connect
    task, _ = await run(driver, {"command": ["sh", "-c", "sleep 0.3; exit 3"]})
    observed = await exited(driver, task.uid)
    assert observed.exit_code == 3 and observed.error == ""

    async def start_and_die() -> bool:
        return seen.count(task.uid) >= 2
    await eventually(start_and_die, timeout=5, what="start and die events")
    listener.cancel()


async def test_command_semantics(driver: DockerExecutor) -> None:
    appended, _ = await run(driver, {"args": ["-c", "echo appended to CMD"]})
    entry, _ = await run(driver, {"entrypoint": ["echo", "entry"], "args": ["a", "b"]})
    both, _ = await run(driver, {"entrypoint": ["sh", "-c"],
                                 "command": ["echo command $0", "zero"]})
    for task, expected in ((appended, b"appended to CMD"), (entry, b"entry a b"),
                           (both, b"command zero")):
        assert (await exited(driver, task.uid)).exit_code == 0
        assert [line.line for line in await collect(driver, task.uid)] == [expected]


async def test_follow_logs_until_exit(driver: DockerExecutor) -> None:
    task, _ = await run(driver, {"command": ["sh", "-c", "for i in 1 2 3; do echo $i; "
                                                         "sleep 0.2; done"]})
    lines = await asyncio.wait_for(collect(driver, task.uid, follow=True), 10)
    assert [line.line for line in lines] == [b"1", b"2", b"3"]


async def test_bad_image_and_bad_spec_are_rejected(driver: DockerExecutor) -> None:
    with pytest.raises(TaskRejectedError, match="shoal/nope"):
        await driver.prepare(make_task(driver.node, {"image": "shoal/nope"}))
    with pytest.raises(TaskRejectedError, match="bind source path does not exist"):
        await run(driver, {"mounts": [{"type": "bind", "source": "/nonexistent/x",
                                       "target": "/x"}]})
    with pytest.raises(TaskRejectedError, match="memory"):
        await run(driver, {"resources": {"limits": {"memory": "lots"}}})
    # An executable that does not exist fails the start, recorded as the exit error.
    task, observed = await run(driver, {"command": ["no-such-binary"]})
    assert observed.state == "exited" and "no-such-binary" in observed.error
    assert (await driver.start(task)).state == "exited"  # not retried behind our back


async def test_healthchecks(driver: DockerExecutor) -> None:
    fast = {"interval": "200ms", "timeout": "2s", "retries": 2}
    good, observed = await run(driver, {
        "command": ["sleep", "1000"], "healthcheck": {"test": ["CMD", "true"], **fast}})
    assert observed.health == "starting"
    bad, _ = await run(driver, {
        "command": ["sleep", "1000"],
        "healthcheck": {"test": ["CMD-SHELL", "echo sick; exit 1"], **fast}})
    off, _ = await run(driver, {"command": ["sleep", "1000"], "healthcheck": {"test": ["NONE"]}})

    async def health(uid: str, want: str) -> bool:
        return (await driver.observe(uid)).health == want
    await eventually(lambda: health(good.uid, "healthy"), timeout=15, what="healthy")
    await eventually(lambda: health(bad.uid, "unhealthy"), timeout=15, what="unhealthy")
    assert (await driver.observe(off.uid)).health == "none"


async def test_adoption_by_a_new_driver_and_no_duplicates(docker_node: str,
                                                          docker_client: Any) -> None:
    first = DockerExecutor(docker_node)
    task, observed = await run(first, {"command": ["sleep", "1000"]})
    await first.close()  # the agent dies; the container lives on

    second = DockerExecutor(docker_node)
    try:
        managed = await second.list_managed()
        assert [(m.task_uid, m.task_name, m.workload_id) for m in managed] == [
            (task.uid, task.name, observed.workload_id)]
        adopted = await second.start(task)
        assert adopted.workload_id == observed.workload_id and adopted.state == "running"
        # Two drivers racing to start one new task still make one container.
        racing = make_task(docker_node, {"command": ["sleep", "1000"]})
        third = DockerExecutor(docker_node)
        try:
            results = await asyncio.gather(second.start(racing), third.start(racing))
        finally:
            await third.close()
        assert results[0].workload_id == results[1].workload_id
        assert len(docker_client.containers.list(
            all=True, filters={"label": f"{LABEL_TASK_UID}={racing.uid}"})) == 1
        await second.remove(task.uid)
        await second.remove(racing.uid)
        assert await second.list_managed() == []
    finally:
        await second.close()


CRASHING_AGENT = """
import asyncio, json, sys
from shoal.agent.docker.driver import DockerExecutor
from shoal.agent.exec.executor import TaskSpec
node, tasks = sys.argv[1], json.loads(sys.argv[2])
async def main():
    ex = DockerExecutor(node)
    print("starting", flush=True)
    await asyncio.gather(*(ex.start(TaskSpec(**t)) for t in tasks))
    print("started", flush=True)
    await asyncio.sleep(1000)
asyncio.run(main())
"""


async def test_agent_killed_mid_start_leaves_no_duplicates(driver: DockerExecutor,
                                                           docker_client: Any) -> None:
    """SIGKILL the agent while it creates and starts containers; a new agent adopts the
    ones that exist, finishes the half-done ones, creates the rest: one each."""
    import dataclasses
    import json
    import sys

    tasks = [make_task(driver.node, {"command": ["sleep", "1000"]}) for _ in range(8)]
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_AGENT, driver.node,
        json.dumps([dataclasses.asdict(t) for t in tasks]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert agent.stdout is not None
    assert await asyncio.wait_for(agent.stdout.readline(), 20) == b"starting\n"
    await asyncio.sleep(0.05)
    agent.kill()
    await agent.wait()
    results = await asyncio.gather(*(driver.start(task) for task in tasks))
    assert [r.state for r in results] == ["running"] * len(tasks)
    for task, result in zip(tasks, results, strict=True):
        found = docker_client.containers.list(
            all=True, filters={"label": f"{LABEL_TASK_UID}={task.uid}"})
        assert [c.id for c in found] == [result.workload_id]


async def test_container_created_but_never_started_is_started(driver: DockerExecutor,
                                                               docker_client: Any) -> None:
    """The agent died between create and start: the next start() finishes the job."""
    task = make_task(driver.node, {"command": ["sleep", "1000"]})
    kwargs = driver._create_kwargs(task, None)
    cid = await asyncio.to_thread(driver._create, task, task.name, kwargs)
    assert (await driver.observe(task.uid)).state == "created"
    fresh = DockerExecutor(driver.node)
    try:
        observed = await fresh.start(task)
    finally:
        await fresh.close()
    assert (observed.state, observed.workload_id) == ("running", cid)
