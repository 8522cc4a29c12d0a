"""The process driver: real supervised processes in their own network namespaces."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.exec.executor import LogLine, Observed, TaskRejectedError, TaskSpec
from shoal.agent.process.driver import ProcessExecutor
from shoal.agent.process.shim import alive
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(120)

PY = sys.executable


def make_task(node: str, template: dict[str, Any]) -> TaskSpec:
    uid = uuid.uuid4().hex
    return TaskSpec(uid=uid, name=f"job.1.{uid[:12]}", namespace="default", service="job",
                    node=node, slot=1, template=template)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def driver(state_dir: Path, node_name: str) -> AsyncIterator[ProcessExecutor]:
    ex = ProcessExecutor(node_name, state_dir)
    yield ex
    # Clean-up by "label": whatever the node's state directory lists goes, processes too.
    cleaner = ProcessExecutor(node_name, state_dir)
    for managed in await cleaner.list_managed():
        await cleaner.remove(managed.task_uid)
    await cleaner.close()
    await ex.close()


async def run(driver: ProcessExecutor, template: dict[str, Any]) -> tuple[TaskSpec, Observed]:
    task = make_task(driver.node, template)
    await driver.prepare(task)
    return task, await driver.start(task)


async def collect(driver: ProcessExecutor, uid: str, **kwargs: Any) -> list[LogLine]:
    return [line async for line in driver.logs(uid, **kwargs)]


async def exited(driver: ProcessExecutor, uid: str) -> Observed:
    async def probe() -> Observed | None:
        observed = await driver.observe(uid)
        return observed if observed.state == "exited" else None
    return await eventually(probe, timeout=15, what=f"task {uid} exited")


async def test_runs_in_its_own_netns_as_its_user_with_logs(driver: ProcessExecutor,
                                                           tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)  # user nobody works in it
    task, observed = await run(driver, {
        "image": "shoal/busybox",  # ignored by this driver
        "command": ["sh", "-c", 'echo "$FOO $(pwd) $(id -u) $(hostname)"; echo oops >&2; '
                                "ip -o link; exec sleep 1000"],
        "env": {"FOO": "bar"}, "workdir": str(tmp_path), "user": "nobody",
    })
    assert observed.state == "running" and observed.pid
    assert observed.workload_id == str(observed.pid)
    assert os.readlink(f"/proc/{observed.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert (await driver.start(task)).pid == observed.pid  # idempotent

    async def printed() -> list[LogLine] | None:
        lines = await collect(driver, task.uid, timestamps=True)
        return lines if len(lines) >= 3 else None
    lines = await eventually(printed, timeout=10, what="log lines")
    hostname = task.name
    assert LogLine("stdout", f"bar {tmp_path} 65534 {hostname}".encode(),
                   lines[0].timestamp) == lines[0]
    assert any(line.stream == "stderr" and line.line == b"oops" for line in lines)
    links = [line.line.decode() for line in lines if b"link/" in line.line]
    assert len(links) == 1 and links[0].split(":")[1].strip() == "lo" and "UP" in links[0]
    assert all(line.timestamp and abs(line.timestamp - time.time()) < 60 for line in lines)
    assert [line.timestamp for line in await collect(driver, task.uid, tail=1)] == [None]
    assert len(await collect(driver, task.uid, tail=2)) == 2


async def test_exit_code_changes_and_follow(driver: ProcessExecutor) -> None:
    seen: list[str] = []

    async def listen() -> None:
        async for uid in driver.changes():
            seen.append(uid)
    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0)
    task, _ = await run(driver, {"command": ["sh", "-c", "for i in 1 2 3; do echo $i; "
                                                         "sleep 0.2; done; exit 3"]})
    lines = await asyncio.wait_for(collect(driver, task.uid, follow=True), 10)
    assert [line.line for line in lines] == [b"1", b"2", b"3"]
    observed = await exited(driver, task.uid)
    assert observed.exit_code == 3
    await eventually(lambda: _true(task.uid in seen), timeout=5, what="exit reported")
    listener.cancel()


async def _true(value: bool) -> bool:
    return value


async def test_stop_honours_grace_and_signal(driver: ProcessExecutor) -> None:
    stubborn, _ = await run(driver, {"command": ["sh", "-c", "trap '' TERM; sleep 1000"]})
    polite, _ = await run(driver, {"command": ["sleep", "1000"]})
    custom, _ = await run(driver, {"command": ["sh", "-c", "trap 'exit 7' USR2; "
                                                           "while :; do sleep 0.05; done"],
                                   "stopSignal": "USR2"})
    t0 = time.monotonic()
    await driver.stop(stubborn.uid, grace=1.0)
    assert 0.9 <= time.monotonic() - t0 < 4
    assert (await driver.observe(stubborn.uid)).exit_code == 137
    t0 = time.monotonic()
    await asyncio.gather(driver.stop(polite.uid, grace=10), driver.stop(custom.uid, grace=10))
    assert time.monotonic() - t0 < 3
    assert (await driver.observe(polite.uid)).exit_code == 143
    assert (await driver.observe(custom.uid)).exit_code == 7
    await driver.stop(polite.uid, grace=1)  # stopping a stopped task is fine


async def test_adoption_by_a_new_driver(state_dir: Path, node_name: str,
                                        driver: ProcessExecutor) -> None:
    task, observed = await run(driver, {"command": ["sh", "-c", "echo before; sleep 1000"],
                                        "stopGracePeriod": "1s"})
    await driver.close()  # the agent dies; the process lives on
    second = ProcessExecutor(node_name, state_dir)
    try:
        assert [(m.task_uid, m.task_name, m.workload_id) for m in await second.list_managed()
                ] == [(task.uid, task.name, str(observed.pid))]
        adopted = await second.start(task)
        assert adopted.state == "running" and adopted.pid == observed.pid
        # The shell may not have written its line yet when start() returns: wait for
        # output, then require exactly that line.
        lines = await eventually(lambda: collect(second, task.uid), timeout=10,
                                 what="the adopted task's log")
        assert [line.line for line in lines] == [b"before"]
        # Two drivers racing to start one new task still make one process.
        racing = make_task(node_name, {"command": ["sleep", "1000"]})
        third = ProcessExecutor(node_name, state_dir)
        results = await asyncio.gather(second.start(racing), third.start(racing))
        await third.close()
        assert results[0].pid == results[1].pid and results[0].pid
        await second.remove(task.uid)
        assert not alive(observed.pid, None)
        assert (await second.observe(task.uid)).state == "missing"
        await second.remove(task.uid)  # removing nothing is fine
        await second.remove(racing.uid)
        assert await second.list_managed() == []
        assert list(second.dir.iterdir()) == []
    finally:
        await second.close()


async def test_health_checks_run_in_the_task_netns(driver: ProcessExecutor) -> None:
    server = ("import socket,time; s=socket.socket(); s.bind(('127.0.0.1', {port})); "
              "s.listen(); print('listening', flush=True); time.sleep(1000)")
    probe = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)"
    port = 47011
    fast = {"interval": "200ms", "timeout": "5s", "retries": 2}
    good, observed = await run(driver, {
        "command": [PY, "-c", server.format(port=port)],
        "healthcheck": {"test": ["CMD", PY, "-c", probe, str(port)], **fast}})
    bad, _ = await run(driver, {
        "command": ["sleep", "1000"],
        "healthcheck": {"test": ["CMD-SHELL", "echo sick; exit 1"], **fast}})
    slow, _ = await run(driver, {
        "command": ["sleep", "1000"],
        "healthcheck": {"test": ["CMD", "false"], "startPeriod": "30s", **fast}})
    assert observed.health == "starting"

    async def health(uid: str, want: str) -> bool:
        return (await driver.observe(uid)).health == want
    await eventually(lambda: health(good.uid, "healthy"), timeout=15, what="healthy")
    await eventually(lambda: health(bad.uid, "unhealthy"), timeout=15, what="unhealthy")
    assert (await driver.observe(slow.uid)).health == "starting"  # failures don't count yet
    # The port is only open inside the task's namespace.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        pass
    # A new driver (a restarted agent) keeps the health it had, then keeps checking.
    second = ProcessExecutor(driver.node, driver.dir.parent.parent)
    try:
        assert (await second.observe(good.uid)).health == "healthy"
        assert (await second.observe(bad.uid)).health == "unhealthy"
    finally:
        await second.close()


async def test_bad_specs_are_rejected(driver: ProcessExecutor) -> None:
    with pytest.raises(TaskRejectedError, match="no-such-binary"):
        await driver.prepare(make_task(driver.node, {"command": ["no-such-binary"]}))
    with pytest.raises(TaskRejectedError, match="has none"):
        await driver.prepare(make_task(driver.node, {"image": "shoal/busybox"}))
    with pytest.raises(TaskRejectedError, match="unable to find user"):
        await driver.prepare(make_task(driver.node, {"command": ["true"], "user": "nobody2"}))
    with pytest.raises(TaskRejectedError, match="workdir"):
        await driver.prepare(make_task(driver.node, {"command": ["true"],
                                                     "workdir": "/nonexistent"}))
    with pytest.raises(TaskRejectedError, match="cannot give capabilities to user 65534"):
        await driver.prepare(make_task(driver.node, {"command": ["true"], "user": "nobody",
                                                     "capAdd": ["NET_ADMIN"]}))


def host_sysctls() -> tuple[str, str]:
    return (Path("/proc/sys/net/core/somaxconn").read_text(),
            Path("/proc/sys/kernel/msgmax").read_text())


async def test_ulimits_sysctls_and_dropped_capabilities(driver: ProcessExecutor) -> None:
    # What the process itself sees: its limits, its namespaces' parameters, its
    # capability bounding set; the host's values stay as they were.
    before = host_sysctls()
    task, _ = await run(driver, {
        "command": ["sh", "-c", "grep 'Max open files' /proc/self/limits; "
                                "cat /proc/sys/net/core/somaxconn /proc/sys/kernel/msgmax; "
                                "grep CapBnd /proc/self/status"],
        "init": True, "capDrop": ["NET_RAW", "chown"],
        "sysctls": {"net.core.somaxconn": "1234", "kernel.msgmax": "4321"},
        "ulimits": {"nofile": {"soft": 100, "hard": 200}},
    })
    assert (await exited(driver, task.uid)).exit_code == 0
    nofile, somaxconn, msgmax, capbnd = [line.line.decode()
                                         for line in await collect(driver, task.uid)]
    assert nofile.split()[3:5] == ["100", "200"]
    assert (somaxconn, msgmax) == ("1234", "4321")
    bounding = int(capbnd.split()[1], 16)
    assert not bounding & (1 << 13) and not bounding & (1 << 0)  # NET_RAW, CHOWN
    assert bounding & (1 << 21)  # SYS_ADMIN: the others stay
    assert host_sysctls() == before


CRASHING_AGENT = """
import asyncio, json, sys
from shoal.agent.exec.executor import TaskSpec
from shoal.agent.process.driver import ProcessExecutor
node, state, tasks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
async def main():
    ex = ProcessExecutor(node, state)
    print("starting", flush=True)
    await asyncio.gather(*(ex.start(TaskSpec(**t)) for t in tasks))
    print("started", flush=True)
    await asyncio.sleep(1000)
asyncio.run(main())
"""


def processes_marked(marker: str) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        count += 1
            except OSError:
                pass
    return count


@pytest.mark.parametrize("kill_after", [0.15, 0.4])
async def test_agent_killed_mid_start_leaves_no_duplicates(state_dir: Path, node_name: str,
                                                           driver: ProcessExecutor,
                                                           kill_after: float) -> None:
    """SIGKILL the agent while it starts tasks; a new agent ends with one process each."""
    import dataclasses
    import json

    tasks = [make_task(node_name, {"command": ["sh", "-c", "sleep 1000; :", f"mark-{i}"]})
             for i in range(8)]
    for task in tasks:
        task.template["command"][3] = f"mark-{task.uid}"
    agent = await asyncio.create_subprocess_exec(
        PY, "-c", CRASHING_AGENT, node_name, str(state_dir),
        json.dumps([dataclasses.asdict(t) for t in tasks]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert agent.stdout is not None
    assert await asyncio.wait_for(agent.stdout.readline(), 20) == b"starting\n"
    await asyncio.sleep(kill_after)
    agent.kill()
    await agent.wait()
    results = await asyncio.gather(*(driver.start(task) for task in tasks))
    assert [r.state for r in results] == ["running"] * len(tasks)
    await asyncio.sleep(0.3)  # a shim orphaned mid-spawn would have started by now
    for task, result in zip(tasks, results, strict=True):
        assert processes_marked(f"mark-{task.uid}") == 1, task.uid
        assert (await driver.observe(task.uid)).pid == result.pid
