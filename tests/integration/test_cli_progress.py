"""Convergence progress, ``service ps`` and ``get services`` REPLICAS with the
controllers simulated: the test writes Task (and Node) objects into etcd itself, so every
state, timestamp and error is exactly what the assertions expect. The real swctl runs as
a subprocess, as users run it.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.cli import controllers
from shoal.crds import kinds, resource
from shoal.store import client, etcd_server
from tests.integration.cli_support import Swctl, command, service

REGISTRY = kinds.Registry.builtin()
TASKS = REGISTRY.lookup("tasks")
NODES = REGISTRY.lookup("nodes")


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


def stamp(seconds_ago: float) -> str:
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def task(service_name: str, name: str, *, slot: int = 0, node: str | None = None,
         desired: str = "running", state: str = "pending", ago: float = 0,
         **status: Any) -> resource.Resource:
    """A task as the orchestrator writes it, with the status an agent would report."""
    spec: dict[str, Any] = {"serviceName": service_name, "slot": slot,
                            "desiredState": desired, "serviceGeneration": 1,
                            "template": {"image": "shoal/busybox@sha256:abc"}}
    if node:
        spec["nodeName"] = node
    obj = resource.new("Task", name, "default", spec,
                       labels={"shoal.io/service": service_name})
    obj.status = {"state": state, "timestamp": stamp(ago), **status}
    return obj


async def put(store: client.Store, obj: resource.Resource) -> resource.Resource:
    return await store.create(TASKS if obj.kind == "Task" else NODES, obj)


async def move(store: client.Store, name: str, **status: Any) -> None:
    """Report a new observed state for task ``name``, as its agent would."""
    current = await store.get(TASKS, name, "default")
    current.status = {**current.status, **status, "timestamp": stamp(0)}
    await store.update(TASKS, current)


def node(name: str, availability: str = "active") -> resource.Resource:
    obj = resource.new("Node", name, None, {"availability": availability, "role": "worker"})
    obj.status = {"state": "ready", "address": "192.0.2.10"}
    return obj


# --- waiting, with the controllers played by the test ---

async def test_apply_shows_progress_until_converged(swctl: Swctl,
                                                    store: client.Store) -> None:
    path = swctl.write("web.yaml", service("web", 2))
    apply = swctl.start("apply", "-f", str(path), "--verify-window", "0.3")
    try:
        assert apply.read_line() == "service/web created"
        assert apply.read_line() == "overall progress: 0 out of 2 tasks"
        assert apply.read_line().startswith("1/2: new       [>   ")
        assert apply.read_line().startswith("2/2: new       [>   ")
        await put(store, task("web", "web.1.1", slot=1))
        await put(store, task("web", "web.2.1", slot=2))
        assert apply.read_line() == "1/2: pending   [" + "=" * 8 + ">" + " " * 42 + "]"
        assert apply.read_line().startswith("2/2: pending   [")
        await move(store, "web.1.1", state="running")
        assert apply.read_line() == "overall progress: 1 out of 2 tasks"
        assert apply.read_line() == "1/2: running   [" + "=" * 50 + ">]"
        await move(store, "web.2.1", state="starting")
        assert apply.read_line() == "2/2: starting  [" + "=" * 41 + ">" + " " * 9 + "]"
        await move(store, "web.2.1", state="running")
        assert apply.read_line() == "overall progress: 2 out of 2 tasks"
        assert apply.read_line().startswith("2/2: running   [")
        assert apply.read_line() == ("verify: Waiting 0.3 seconds to verify that tasks are "
                                     "stable...")
        assert apply.read_line() == "verify: Service converged"
        assert apply.proc.wait(timeout=10) == 0
    finally:
        apply.kill()


async def test_rejected_task_ends_the_wait_with_its_error(swctl: Swctl,
                                                          store: client.Store) -> None:
    path = swctl.write("bad.yaml", service("bad"))
    apply = swctl.start("apply", "-f", str(path))
    try:
        assert apply.read_line() == "service/bad created"
        # Only tasks that fail after the wait began count: let it take its first look.
        assert apply.read_line() == "overall progress: 0 out of 1 tasks"
        await put(store, task("bad", "bad.1.1", slot=1, node="n1", state="rejected",
                              err="No such image: shoal/nope"))
        code = apply.proc.wait(timeout=10)
        assert apply.proc.stderr is not None
        err = apply.proc.stderr.read()
        assert code == 1
        assert err == ("error: service/bad cannot converge: task bad.1.1 was rejected on node "
                       "n1: No such image: shoal/nope\n")
    finally:
        apply.kill()


def test_without_controllers_the_wait_says_so(swctl: Swctl) -> None:
    path = swctl.write("lonely.yaml", service("lonely", 2))
    started = time.monotonic()
    result = swctl("apply", "-f", str(path), "--timeout", "1", expect=1)
    assert time.monotonic() - started < 10
    assert result.stdout.splitlines()[:2] == ["service/lonely created",
                                              "overall progress: 0 out of 2 tasks"]
    err = result.stderr.splitlines()
    assert err[0] == ("error: service/lonely did not converge within 1s: 0 out of 2 tasks "
                      "running")
    assert err[1] == ("  no task was created for lonely; is the controller-manager running? "
                      "(swctl up)")
    # The service was written all the same, and -d does not wait at all.
    assert swctl("get", "svc", "lonely", "-o", "name").stdout == "service/lonely\n"
    assert swctl("scale", "lonely=3", "-d").stdout == "lonely scaled to 3\n"


# --- service ps and get services ---

async def test_service_ps_lists_current_tasks_with_history_newest_first(
        swctl: Swctl, store: client.Store) -> None:
    swctl("apply", "-d", "-f", str(swctl.write("web.yaml", service("web", 2))))
    # Slot 1: two failures, then a running task; slot 2 waits; slot 3 was scaled away.
    await put(store, task("web", "web.1.1", slot=1, node="n1", desired="shutdown",
                          state="failed", ago=300, exitCode=1, err="task: non-zero exit (1)"))
    await put(store, task("web", "web.1.2", slot=1, node="n2", desired="shutdown",
                          state="failed", ago=120, exitCode=137,
                          err="killed by the kernel for using more memory than allowed"))
    await put(store, task("web", "web.1.3", slot=1, node="n1", state="running", ago=600))
    await put(store, task("web", "web.2.1", slot=2, state="pending", ago=90,
                          message="no suitable node (1 drained)"))
    await put(store, task("web", "web.3.1", slot=3, node="n2", desired="shutdown",
                          state="shutdown", ago=30))
    lines = swctl("service", "ps", "web").stdout.splitlines()
    # Columns are three or more spaces apart; an empty cell (no node yet) vanishes.
    assert re.split(" {3,}", lines[0]) == ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE",
                                           "CURRENT STATE", "ERROR"]
    rows = [re.split(" {3,}", line.strip()) for line in lines[1:]]
    names = [row[1] for row in rows]
    assert names == ["web.1", "\\_ web.1", "\\_ web.1", "web.2"]
    assert rows[0][2:] == ["shoal/busybox", "n1", "Running", "Running 10 minutes ago"]
    assert rows[1][3:] == ["n2", "Shutdown", "Failed 2 minutes ago",
                           '"killed by the kernel for usin\u2026"']
    assert rows[2][3:] == ["n1", "Shutdown", "Failed 5 minutes ago",
                           '"task: non-zero exit (1)"']
    assert rows[3][3:] == ["Running", "Pending About a minute ago",
                           '"no suitable node (1 drained)"']
    ids = swctl("service", "ps", "web", "-q").stdout.split()
    assert len(ids) == 4 and all(len(i) == 12 for i in ids)
    # --all adds the slot the service no longer has; --no-trunc shows everything.
    every = swctl("service", "ps", "web", "-a", "--no-trunc").stdout
    assert "web.3" in every and "killed by the kernel for using more memory than allowed" in every
    assert "shoal/busybox@sha256:abc" in every
    assert "not found" in swctl("service", "ps", "nope", expect=1).stderr


async def test_get_services_replicas_counts_tasks(swctl: Swctl, store: client.Store) -> None:
    swctl("apply", "-d", "-f", str(swctl.write("s.yaml", service("web", 3) + "---\n" +
                                              service("glob").replace(
                                                  "spec:\n", "spec:\n  mode: global\n"))))
    await put(store, task("web", "web.1.1", slot=1, node="n1", state="running"))
    await put(store, task("web", "web.2.1", slot=2, node="n1", state="starting"))
    await put(store, task("web", "web.3.1", slot=3, node="n1", desired="shutdown",
                          state="running"))
    await put(store, task("glob", "glob.n1.1", node="n1", state="running"))
    await put(store, task("glob", "glob.n2.1", node="n2", state="running"))
    lines = swctl("get", "services").stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows == {"web": ["replicated", "1/3"], "glob": ["global", "2/2"]}
    listed = swctl("service", "ls").stdout.splitlines()
    assert [line.split()[:3] for line in listed] == [line.split()[:3] for line in lines]


async def test_get_services_watch_prints_a_row_as_replicas_start(
        swctl: Swctl, store: client.Store) -> None:
    swctl("apply", "-d", "-f", str(swctl.write("web.yaml", service("web", 2))))
    watcher = swctl.start("get", "services", "-w")
    try:
        assert watcher.read_line().split()[:3] == ["NAME", "MODE", "REPLICAS"]
        assert watcher.read_line().split()[:3] == ["web", "replicated", "0/2"]
        # A pending task changes no cell: nothing printed. Each start prints a row.
        await put(store, task("web", "web.1.1", slot=1))
        await put(store, task("web", "web.2.1", slot=2, node="n1", state="running"))
        assert watcher.read_line().split()[:3] == ["web", "replicated", "1/2"]
        await move(store, "web.1.1", state="running")
        assert watcher.read_line().split()[:3] == ["web", "replicated", "2/2"]
        await move(store, "web.2.1", state="failed")
        assert watcher.read_line().split()[:3] == ["web", "replicated", "1/2"]
        code, err = watcher.interrupt()
        assert code == 0 and err == ""
    finally:
        watcher.kill()


async def test_global_progress_is_per_node(swctl: Swctl, store: client.Store) -> None:
    for name in ("n1", "n2"):
        await put(store, node(name))
    await put(store, node("n3", availability="drain"))  # not eligible: no line for it
    path = swctl.write("g.yaml", service("g").replace("spec:\n", "spec:\n  mode: global\n"))
    apply = swctl.start("apply", "-f", str(path), "--verify-window", "0")
    try:
        assert apply.read_line() == "service/g created"
        assert apply.read_line() == "overall progress: 0 out of 2 tasks"
        assert apply.read_line().startswith("n1: new       [")
        assert apply.read_line().startswith("n2: new       [")
        await put(store, task("g", "g.n1.1", node="n1", state="running"))
        await put(store, task("g", "g.n2.1", node="n2", state="running"))
        seen = [apply.read_line()]
        while seen[-1] != "verify: Service converged":
            seen.append(apply.read_line())
        assert "overall progress: 2 out of 2 tasks" in seen
        assert {line.split(":")[0] for line in seen if "running   [" in line} == {"n1", "n2"}
        assert apply.proc.wait(timeout=10) == 0
    finally:
        apply.kill()


# --- wiring ---

def test_agent_verb_hands_its_arguments_to_the_agent(swctl: Swctl) -> None:
    shown = swctl("agent", "--help").stdout
    assert shown.startswith("usage: swctl agent") and "--hollow-start-delay" in shown
    bad = subprocess.run(command("--etcd", swctl.etcd_url, "agent", "--no-such-flag"),
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr


def test_builtin_controllers_come_from_the_controllers_package() -> None:
    names = [spec.name for spec in controllers.builtin_controllers()]
    assert {"orchestrator", "scheduler", "nodes"} <= set(names)
    assert "shoal.controllers.builtin" in sys.modules


def test_up_falls_back_to_the_process_runtime_without_dockerd(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from shoal.agent.docker import dockerd
    from shoal.cli import cluster

    def no_dockerd(*args: object, **kwargs: object) -> str:
        raise dockerd.DockerdError("dockerd is not installed (apt-get install docker.io)")

    monkeypatch.setattr(dockerd, "ensure_dockerd", no_dockerd)
    assert cluster._local_runtime("auto") == "process"
    out = capsys.readouterr().out
    assert out.startswith("! no dockerd (dockerd is not installed") and "process runtime" in out
    with pytest.raises(Exception, match="--runtime docker: dockerd is not installed"):
        cluster._local_runtime("docker")
