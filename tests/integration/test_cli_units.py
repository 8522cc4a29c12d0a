"""``swctl init``/``join``/``leave`` where systemd manages the node: the units they
install run the cluster.

systemd is not PID 1 on the test machine, so ``systemctl`` is ``fake_systemctl.py`` put
first on ``PATH`` -- the one seam (``shoal.cli.systemctl``) the units path goes through,
replaced as the house rules allow for that seam only. It records every call and runs
the *ExecStart= lines of the unit files it loaded*, so everything else is real: a
manager and a worker (each a data dir and a loopback address, as in test_cli_join.py)
with their etcd member, controller-manager, agents (hollow runtime) and role watchers
started from the rendered units; the cluster they make answers ``node ls`` and runs a
service's tasks. That the process of each unit runs exactly ``nodeprocs``' argv is read
from ``/proc``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cli import nodeprocs, units
from shoal.join import datadir
from tests.helpers import eventually_sync

PREFIX = "/units"
NET = random.randint(100, 250)
FAKE = Path(__file__).with_name("fake_systemctl.py")


class Machine:
    def __init__(self, base: Path, name: str, i: int, env: dict[str, str]) -> None:
        self.name = name
        self.address = f"127.0.{NET}.{i + 10}"
        self.dir = base / name
        self.layout = datadir.Layout(self.dir)
        self.env = dict(env, SHOAL_DATA_DIR=str(self.dir), SHOAL_PREFIX=PREFIX)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "shoal.cli", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def swctl(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        proc = self.start(*args)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == expect, (
            f"[{self.name}] swctl {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{out}\nstderr:\n{err}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def flags(self) -> list[str]:
        return ["--advertise-addr", self.address, "--name", self.name, "--runtime", "hollow"]

    def unit(self, process: str) -> str:
        return units.unit_name(self.dir, process)


class Systemd:
    """The fake's state: its calls and the processes it runs."""

    def __init__(self, base: Path) -> None:
        self.state = base / "systemctl-state"
        self.unit_dir = base / "etc-systemd-system"
        self.unit_dir.mkdir()
        bin_dir = base / "bin"
        bin_dir.mkdir()
        script = bin_dir / "systemctl"
        script.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
        script.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        self.env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SHOAL_SYSTEMD="yes",
                        SHOAL_SYSTEMD_UNIT_DIR=str(self.unit_dir),
                        FAKE_SYSTEMCTL_DIR=str(self.state))

    def calls(self) -> list[str]:
        try:
            return (self.state / "calls").read_text().splitlines()
        except FileNotFoundError:
            return []

    def pid(self, unit: str) -> int | None:
        try:
            return int(json.loads((self.state / f"{unit}.pid").read_text())["pid"])
        except FileNotFoundError:
            return None

    def files(self) -> list[str]:
        return sorted(p.name for p in self.unit_dir.iterdir())

    def stop_everything(self) -> None:
        for record in self.state.glob("*.pid"):
            pid = int(json.loads(record.read_text())["pid"])
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.fixture(scope="module")
def systemd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Systemd]:
    s = Systemd(tmp_path_factory.mktemp("systemd"))
    # nodeprocs called from the test itself goes through the same fake.
    with pytest.MonkeyPatch.context() as mp:
        for key in ("PATH", "SHOAL_SYSTEMD_UNIT_DIR", "FAKE_SYSTEMCTL_DIR"):
            mp.setenv(key, s.env[key])
        yield s
    s.stop_everything()


@pytest.fixture(scope="module")
def machines(systemd: Systemd,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Machine]:
    base = tmp_path_factory.mktemp("machines")
    return {name: Machine(base, name, i, systemd.env) for i, name in enumerate(["m1", "w1"])}


def test_init_killed_after_its_etcd_unit_started_finishes_when_run_again(
        systemd: Systemd, machines: dict[str, Machine]) -> None:
    m1 = machines["m1"]
    proc = m1.start("init", *m1.flags())
    eventually_sync(lambda: f"enable --now {m1.unit('etcd')}" in systemd.calls(), 60,
                    "the etcd unit enabled")
    proc.kill()
    proc.communicate()
    assert json.loads(m1.layout.start_file.read_text())["supervisor"] == "systemd"
    out = m1.swctl("init", *m1.flags()).stdout
    assert out.startswith("Swarm initialized: current node ("), out


def test_init_installs_enables_and_starts_the_managers_units(
        systemd: Systemd, machines: dict[str, Machine]) -> None:
    m1 = machines["m1"]
    names = [m1.unit(p) for p in (units.ETCD, units.MANAGER, units.AGENT, units.ROLE_WATCH)]
    assert systemd.files() == sorted(names)
    # Each unit is written, loaded, then enabled and started, in the start order.
    calls = systemd.calls()
    last_init = max(i for i, c in enumerate(calls) if c == f"enable --now {names[0]}")
    enables = [c.removeprefix("enable --now ") for c in calls[last_init:]
               if c.startswith("enable --now")]
    assert enables == names
    assert "daemon-reload" in calls[:calls.index(f"enable --now {names[0]}")]
    # Nothing runs detached.
    assert nodeprocs.load(m1.layout) == []
    cfg = datadir.load_node(m1.layout)
    rec = nodeprocs.load_start(m1.layout)
    assert rec is not None and rec.systemd and rec.runtime == "hollow"
    assert rec.unit_dir == str(systemd.unit_dir)  # leave and role-watch use this one
    for process, unit in zip((units.ETCD, units.MANAGER, units.AGENT, units.ROLE_WATCH),
                             names, strict=True):
        text = (systemd.unit_dir / unit).read_text()
        pid = systemd.pid(unit)
        assert pid is not None, unit
        # The process runs the unit's ExecStart line, which is the detached argv.
        assert cmdline(pid) == units.exec_start(text)
        if process != units.ETCD:
            assert units.exec_start(text) == nodeprocs.argv_for(m1.layout, process, cfg, rec)
        assert nodeprocs.running(m1.layout, process)


def test_a_worker_joins_with_its_two_units_and_the_cluster_runs_a_service(
        systemd: Systemd, machines: dict[str, Machine]) -> None:
    m1, w1 = machines["m1"], machines["w1"]
    token = m1.swctl("join-token", "-q", "worker").stdout.strip()
    out = w1.swctl("join", "--token", token, f"{m1.address}:4243", *w1.flags()).stdout
    assert out.strip().endswith("This node joined a swarm as a worker.")
    mine = [f for f in systemd.files() if f.endswith(units.instance(w1.dir) + ".service")]
    assert mine == sorted([w1.unit(units.AGENT), w1.unit(units.ROLE_WATCH)])
    # A worker has no local etcd member to be ordered after.
    assert "shoal-etcd" not in (systemd.unit_dir / w1.unit(units.AGENT)).read_text()

    def ready() -> bool:
        lines = m1.swctl("node", "ls").stdout.splitlines()[1:]
        return sorted(line.split()[1] for line in lines if "ready" in line) == ["m1", "w1"]
    eventually_sync(ready, 30, "m1 and w1 ready")

    m1.swctl("service", "create", "--name", "web", "--replicas", "2", "-d", "shoal/busybox")

    def running_on() -> list[str]:
        tasks = json.loads(m1.swctl("get", "tasks", "-o", "json").stdout)["items"]
        return sorted(t["spec"].get("nodeName", "") for t in tasks
                      if t["status"].get("state") == "running")
    assert eventually_sync(lambda: running_on() == ["m1", "w1"] or None, 60,
                           "a task running on each node")


def test_leave_stops_disables_and_removes_the_units(
        systemd: Systemd, machines: dict[str, Machine]) -> None:
    m1, w1 = machines["m1"], machines["w1"]
    pids = [systemd.pid(w1.unit(p)) for p in (units.AGENT, units.ROLE_WATCH)]
    assert w1.swctl("leave").stdout == "Node left the swarm.\n"
    calls = systemd.calls()
    assert f"disable --now {w1.unit(units.ROLE_WATCH)}" in calls
    assert f"disable --now {w1.unit(units.AGENT)}" in calls
    assert calls[-1] == "daemon-reload"
    assert all(not f.endswith(units.instance(w1.dir) + ".service") for f in systemd.files())
    assert not w1.layout.start_file.exists() and not w1.layout.exists()
    for pid in pids:
        assert pid is not None
        eventually_sync(lambda p=pid: not Path(f"/proc/{p}").exists()  # type: ignore[misc]
                        or Path(f"/proc/{p}/stat").read_text().split()[2] == "Z", 15,
                        "the worker's processes gone")
    assert m1.swctl("leave", "--force").stdout.endswith("Node left the swarm.\n")
    assert systemd.files() == []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and list(systemd.state.glob("*.pid")):
        time.sleep(0.1)
    assert list(systemd.state.glob("*.pid")) == []
