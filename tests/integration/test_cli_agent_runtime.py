"""``swctl agent`` runs real tasks by default (issue #12, item 4): a real agent process
started the way a tutorial joins a machine (``swctl agent --name joiner``, no
``--runtime``) with a real controller-manager and the real etcd. Here dockerd is made
unreachable (``DOCKER_HOST`` pointing at no socket), so the default must fall back to the
process driver and say so; the task must then really run (its pid alive on this host),
and ``node ls -o wide`` must show the runtime. tests/e2e/test_agent_default_runtime.py
is the same with dockerd answering.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from shoal.store import etcd_server
from tests.helpers import eventually_sync as eventually
from tests.helpers import stop_processes
from tests.integration.cli_support import Swctl, command

T = TypeVar("T")




def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Procs:
    """Long-running swctl processes of one test, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, swctl: Swctl, env: dict[str, str]) -> None:
        self.swctl, self.env = swctl, env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.swctl.cwd / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(command(*args), env=self.env, cwd=self.swctl.cwd,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        return proc

    def stop(self) -> None:
        stop_processes([proc for proc, _ in self.procs], timeout=15)


@pytest.fixture
def no_docker(etcd: etcd_server.EtcdServer, tmp_path: Path) -> Iterator[tuple[Swctl, Procs]]:
    swctl = Swctl(etcd.url, f"/t-{uuid.uuid4().hex[:12]}", tmp_path)
    env = dict(swctl.env, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    procs = Procs(swctl, env)
    try:
        yield swctl, procs
    finally:
        procs.stop()


def test_swctl_agent_refuses_simulation_flags_without_hollow(
        no_docker: tuple[Swctl, Procs]) -> None:
    swctl, _ = no_docker
    # `swctl agent --name joiner --count 3`
    proc = swctl("agent", "--name", "joiner", "--count", "3", expect=2)
    assert proc.stderr.strip().endswith(
        "swctl agent: --count only applies to simulated nodes: add --runtime hollow, or "
        "drop it to run real tasks on this node")
    assert swctl("node", "ls", "-q").stdout.split() == []  # nothing registered


def test_swctl_agent_default_runs_real_processes_without_dockerd(
        no_docker: tuple[Swctl, Procs]) -> None:
    swctl, procs = no_docker
    procs.start("manager", "controller-manager")
    # `swctl agent --name joiner` (plus what keeps the test off the host's shared paths:
    # its own state dir, any free log port, no task networking on the host)
    agent = procs.start("agent", "agent", "--name", "joiner", "--state-dir",
                        str(swctl.cwd / "state"), "--logs-port", "0", "--dataplane", "none",
                        "--heartbeat-ttl", "2")

    def joiner_row() -> list[str] | None:
        lines = swctl("node", "ls", "-o", "wide").stdout.splitlines()
        rows = [[t for t in line.split() if t != "*"] for line in lines[1:]]
        return next((r for r in rows if r[1] == "joiner" and r[2] == "ready"), None)

    row = eventually(joiner_row, what="joiner ready")
    assert agent.poll() is None
    header = swctl("node", "ls", "-o", "wide").stdout.splitlines()[0].split()
    assert row[header.index("RUNTIME")] == "process"  # not hollow: real tasks
    log = (swctl.cwd / "agent.log").read_text()
    assert "swctl agent: no dockerd (DOCKER_HOST=" in log
    assert "tasks run with the process runtime (pass --runtime docker to insist)" in log

    swctl.write("sleeper.yaml", """
        apiVersion: shoal.io/v1
        kind: Service
        metadata: {name: sleeper}
        spec:
          replicas: 1
          template: {image: shoal/busybox, command: [sleep, "300"]}
        """)
    out = swctl("apply", "-f", "sleeper.yaml", "--verify-window", "0.5", timeout=60).stdout
    assert out.splitlines()[-1] == "verify: Service converged"

    def running_pid() -> int | None:
        tasks = yaml.safe_load(swctl("get", "tasks", "-o", "yaml").stdout)["items"]
        for task in tasks:
            if task["status"].get("state") == "running" and task["status"].get("containerId"):
                return int(task["status"]["containerId"])
        return None

    pid = eventually(running_pid, what="a running task with a pid")
    assert pid_alive(pid)  # the task really runs on this host
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        assert fh.read().split(b"\0")[:2] == [b"sleep", b"300"]

    # Removing the service stops the process: nothing left behind on the host.
    swctl("delete", "service/sleeper")
    eventually(lambda: not pid_alive(pid), what=f"task process {pid} gone")
