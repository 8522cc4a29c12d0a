"""``swctl init``/``join``/``leave`` under a real systemd: the units they install run the
cluster, systemd restarts a killed process, ``leave`` takes the units away.

The test machine does not boot with systemd, so the test gives itself one: a private
mount and PID namespace (``unshare``) with a tmpfs ``/run`` holding ``/run/systemd/system``
-- the mark systemd leaves when it is PID 1, which is what ``swctl`` looks for -- and a
systemd *user* manager (``systemd --user``, the same manager code, units and
``systemctl`` protocol as the system one; it refuses to start without that mark).
Everything swctl does runs inside the namespace (``nsenter``), so it chooses systemd by
itself; the only adaptations are where the units go (``$SHOAL_SYSTEMD_UNIT_DIR``: the
user manager's unit dir instead of /etc/systemd/system) and a ``systemctl`` on PATH that
adds ``--user``. Killing the namespace's first process ends everything in it.
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

from shoal.cli import units
from shoal.join import datadir
from tests.helpers import eventually_sync

PREFIX = "/sdunits"
NET = random.randint(100, 250)
SYSTEMD = Path("/lib/systemd/systemd")


class Namespace:
    """The private namespace and its systemd user manager."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.runtime = base / "xdg-run"
        self.config = base / "xdg-config"
        self.unit_dir = self.config / "systemd" / "user"
        for d in (self.runtime, self.unit_dir, base / "home", base / "bin"):
            d.mkdir(parents=True)
        wrapper = base / "bin" / "systemctl"
        wrapper.write_text('#!/bin/sh\nexec /usr/bin/systemctl --user "$@"\n')
        wrapper.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        self.env.update(XDG_RUNTIME_DIR=str(self.runtime), XDG_CONFIG_HOME=str(self.config),
                        HOME=str(base / "home"), PATH=f"{base / 'bin'}:{os.environ['PATH']}",
                        SHOAL_SYSTEMD_UNIT_DIR=str(self.unit_dir))
        script = (f"mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && "
                  f"{SYSTEMD} --user --log-target=console > {base / 'systemd.log'} 2>&1 & "
                  "wait")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                      "--pid", "--fork", "--mount-proc", "sh", "-c", script],
                                     env=self.env)
        self.init_pid = eventually_sync(self._child, 10, "the namespace's first process")
        eventually_sync(lambda: self.run("systemctl", "is-system-running",
                                         check=False).stdout.strip() in ("running",
                                                                         "degraded"),
                        20, "the systemd user manager up")
        # The machine's installed shoal is this checkout, and the role watcher, a unit,
        # finds the same systemctl (services get the manager's environment, not ours).
        pythonpath = os.environ.get("PYTHONPATH", "")
        self.run("systemctl", "set-environment", f"PYTHONPATH={pythonpath}",
                 f"PATH={self.env['PATH']}")

    def _child(self) -> int | None:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        return int(text.split()[0]) if text.split() else None

    def run(self, *argv: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["nsenter", "--target", str(self.init_pid), "--mount", "--pid",
                               "--", *argv], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check:
            assert proc.returncode == 0, (f"{' '.join(argv)} exited {proc.returncode}\n"
                                          f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", f"--property={prop}", "--value",
                        unit).stdout.strip()

    def close(self) -> None:
        try:
            os.kill(self.init_pid, signal.SIGKILL)  # the kernel ends the whole namespace
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


class Machine:
    def __init__(self, ns: Namespace, name: str, i: int) -> None:
        self.ns, self.name = ns, name
        self.address = f"127.0.{NET}.{i + 20}"
        self.dir = ns.base / "machines" / name

    def swctl(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        proc = self.ns.run("env", f"SHOAL_DATA_DIR={self.dir}", f"SHOAL_PREFIX={PREFIX}",
                           sys.executable, "-m", "shoal.cli", *args, check=False)
        assert proc.returncode == expect, (
            f"[{self.name}] swctl {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def flags(self) -> list[str]:
        return ["--advertise-addr", self.address, "--name", self.name, "--runtime", "hollow"]

    def unit(self, process: str) -> str:
        return units.unit_name(self.dir, process)


@pytest.fixture(scope="module")
def ns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (a mount and PID namespace)", pytrace=False)
    n = Namespace(tmp_path_factory.mktemp("systemd"))
    yield n
    n.close()


@pytest.fixture(scope="module")
def machines(ns: Namespace) -> dict[str, Machine]:
    return {name: Machine(ns, name, i) for i, name in enumerate(["m1", "w1"])}


def test_init_and_join_install_units_that_systemd_runs(ns: Namespace,
                                                       machines: dict[str, Machine]) -> None:
    m1, w1 = machines["m1"], machines["w1"]
    out = m1.swctl("init", *m1.flags()).stdout
    assert out.startswith("Swarm initialized: current node ("), out
    assert json.loads(datadir.Layout(m1.dir).start_file.read_text())["supervisor"] == "systemd"
    token = m1.swctl("join-token", "-q", "worker").stdout.strip()
    out = w1.swctl("join", "--token", token, f"{m1.address}:4243", *w1.flags()).stdout
    assert out.strip().endswith("This node joined a swarm as a worker.")

    expected = {m1.unit(p) for p in units.PROCESSES} | {
        w1.unit(units.AGENT), w1.unit(units.ROLE_WATCH)}
    assert {p.name for p in ns.unit_dir.glob("*.service")} == expected
    for unit in expected:
        assert ns.show(unit, "ActiveState") == "active", unit
        assert ns.show(unit, "UnitFileState") == "enabled", unit
        # The process systemd runs is the unit's ExecStart line.
        pid = ns.show(unit, "MainPID")
        argv = ns.run("cat", f"/proc/{pid}/cmdline").stdout.split("\0")[:-1]
        assert argv == units.exec_start((ns.unit_dir / unit).read_text()), unit

    eventually_sync(lambda: node_states(m1) == {"m1": "ready", "w1": "ready"}, 30,
                    "m1 and w1 ready")


def node_states(m1: Machine) -> dict[str, str]:
    """NAME -> STATUS from ``node ls`` (the ``*`` after this host's node's ID dropped)."""
    rows = [[c for c in line.split() if c != "*"]
            for line in m1.swctl("node", "ls").stdout.splitlines()[1:]]
    return {row[1]: row[2] for row in rows}


def running_on(m1: Machine) -> list[str]:
    tasks = json.loads(m1.swctl("get", "tasks", "-o", "json").stdout)["items"]
    return sorted(t["spec"].get("nodeName", "") for t in tasks
                  if t["status"].get("state") == "running")


def test_systemd_restarts_a_killed_agent_and_the_cluster_keeps_working(
        ns: Namespace, machines: dict[str, Machine]) -> None:
    m1, w1 = machines["m1"], machines["w1"]
    m1.swctl("service", "create", "--name", "web", "--replicas", "2", "-d", "shoal/busybox")
    eventually_sync(lambda: running_on(m1) == ["m1", "w1"] or None, 60,
                    "a task running on each node")
    agent = w1.unit(units.AGENT)
    before = ns.show(agent, "MainPID")
    ns.run("kill", "-9", before)
    eventually_sync(lambda: ns.show(agent, "NRestarts") == "1"
                    and ns.show(agent, "SubState") == "running", 20, "the agent restarted")
    assert ns.show(agent, "MainPID") != before
    # The restarted agent reports its node again; whether its task outlived the gap or was
    # moved to m1 (Swarm does not move it back), new tasks are placed on it.
    eventually_sync(lambda: node_states(m1).get("w1") == "ready", 30, "w1 ready again")
    m1.swctl("service", "scale", "web=4", "-d")
    eventually_sync(lambda: (lambda on: len(on) == 4 and "w1" in on)(running_on(m1)), 60,
                    "four tasks running, on the restarted agent's node too")


def manager_status(m1: Machine, name: str) -> str:
    lines = m1.swctl("node", "ls").stdout.splitlines()
    header = lines[0]
    start = header.index("MANAGER STATUS")
    for line in lines[1:]:
        if [c for c in line.split() if c != "*"][1] == name:
            return line[start:start + len("MANAGER STATUS")].strip()
    return ""


def test_promote_and_demote_add_and_remove_the_manager_units(
        ns: Namespace, machines: dict[str, Machine]) -> None:
    m1, w1 = machines["m1"], machines["w1"]
    etcd_unit, cm_unit = w1.unit(units.ETCD), w1.unit(units.MANAGER)
    assert m1.swctl("node", "promote", "w1").stdout == "node/w1 promoted\n"
    eventually_sync(lambda: manager_status(m1, "w1") == "Reachable", 60,
                    "w1 an etcd member, started by its role watcher as a unit")
    eventually_sync(lambda: ns.show(cm_unit, "ActiveState") == "active", 30,
                    "w1's controller-manager unit active")
    assert ns.show(etcd_unit, "UnitFileState") == "enabled"
    # The agent's unit follows node.json (role, endpoints) for its next start.
    agent = units.exec_start((ns.unit_dir / w1.unit(units.AGENT)).read_text())
    assert agent[agent.index("--role") + 1] == "manager"
    assert len(agent[agent.index("--etcd") + 1].split(",")) == 2

    assert m1.swctl("node", "demote", "w1").stdout == "node/w1 demoted\n"
    eventually_sync(lambda: not (ns.unit_dir / etcd_unit).exists()
                    and not (ns.unit_dir / cm_unit).exists(), 30,
                    "w1's etcd and controller-manager units removed")
    assert ns.show(etcd_unit, "ActiveState") == "inactive"
    assert ns.show(w1.unit(units.AGENT), "ActiveState") == "active"
    eventually_sync(lambda: datadir.load_node(datadir.Layout(w1.dir)).role == "worker", 15,
                    "w1 a worker on its machine")


def test_leave_disables_and_removes_the_units(ns: Namespace,
                                              machines: dict[str, Machine]) -> None:
    m1, w1 = machines["m1"], machines["w1"]
    assert w1.swctl("leave").stdout == "Node left the swarm.\n"
    for process in (units.AGENT, units.ROLE_WATCH):
        unit = w1.unit(process)
        assert not (ns.unit_dir / unit).exists()
        assert ns.show(unit, "ActiveState") == "inactive"
    assert m1.swctl("leave", "--force").stdout.endswith("Node left the swarm.\n")
    assert list(ns.unit_dir.glob("*.service")) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ns.show(m1.unit(units.ETCD), "ActiveState") != \
            "inactive":
        time.sleep(0.2)
    assert ns.show(m1.unit(units.ETCD), "ActiveState") == "inactive"
