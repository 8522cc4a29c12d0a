"""``swctl scale``, ``node``, ``service ps`` and apply's convergence wait against a real
cluster: the real etcd, a real ``swctl controller-manager`` and a real hollow agent
(``swctl agent --runtime hollow --count 3``), each a separate process.

One cluster serves the module (starting the processes is most of the cost); every test
uses its own service names, and a test that changes a node puts it back.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import TypeVar

import pytest
import yaml

from shoal.store import etcd_server
from tests.helpers import eventually_sync as eventually
from tests.helpers import stop_processes
from tests.integration.cli_support import Swctl, command, service

NODES = ["n-0", "n-1", "n-2"]
VERIFY = ("--verify-window", "0.3")
T = TypeVar("T")




def node_rows(swctl: Swctl) -> dict[str, list[str]]:
    """NAME -> [NAME, STATUS, ...]: the row without its ID cell (and the local ``*``)."""
    lines = swctl("node", "ls").stdout.splitlines()
    rows = [[t for t in line.split() if t != "*"][1:] for line in lines[1:]]
    return {row[0]: row for row in rows}


@pytest.fixture(scope="module")
def cluster(etcd: etcd_server.EtcdServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swctl]:
    prefix = f"/t-{uuid.uuid4().hex[:12]}"
    cwd = tmp_path_factory.mktemp("orchestration")
    swctl = Swctl(etcd.url, prefix, cwd)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for name, args in (("manager", ["controller-manager"]),
                           ("agent", ["agent", "--runtime", "hollow", "--count", "3",
                                      "--name", "n", "--hollow-start-delay", "0.05"])):
            log = open(cwd / f"{name}.log", "wb")  # closed in finally
            logs.append(log)
            procs.append(subprocess.Popen(command(*args), env=swctl.env, cwd=cwd,
                                          stdout=log, stderr=subprocess.STDOUT))
        eventually(lambda: all(node_rows(swctl).get(n, ["", ""])[1] == "ready"
                               for n in NODES), 20, "3 hollow nodes ready")
        yield swctl
    finally:
        stop_processes(procs, timeout=10)
        for log in logs:
            log.close()


def replicas_column(swctl: Swctl) -> dict[str, str]:
    lines = swctl("get", "services").stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "MODE", "REPLICAS"]
    return {line.split()[0]: line.split()[2] for line in lines[1:]}


def test_apply_waits_for_convergence_then_scale(cluster: Swctl) -> None:
    swctl = cluster
    path = swctl.write("web.yaml", service("web", 2))
    out = swctl("apply", "-f", str(path), *VERIFY).stdout.splitlines()
    assert out[0] == "service/web created"
    assert "overall progress: 2 out of 2 tasks" in out
    assert "1/2: running   [" + "=" * 50 + ">]" in out
    assert out[-1] == "verify: Service converged"
    assert replicas_column(swctl)["web"] == "2/2"

    # docker's spelling, then kubectl's; both wait unless -d.
    out = swctl("scale", "web=4", *VERIFY).stdout.splitlines()
    assert out[0] == "web scaled to 4"
    assert "overall progress: 4 out of 4 tasks" in out and out[-1] == "verify: Service converged"
    assert replicas_column(swctl)["web"] == "4/4"
    assert swctl("scale", "service/web", "--replicas", "1", "-d").stdout == "web scaled to 1\n"
    eventually(lambda: replicas_column(swctl)["web"] == "1/1", what="web at 1/1")

    # Every target is checked before anything is written.
    err = swctl("scale", "web=3", "nope=2", expect=1).stderr
    assert 'services "nope" not found' in err
    assert yaml.safe_load(swctl("get", "svc", "web", "-o", "yaml").stdout)["spec"][
        "replicas"] == 1


def test_global_service_converges_per_node_and_refuses_scale(cluster: Swctl) -> None:
    swctl = cluster
    path = swctl.write("glob.yaml", service("glob").replace(
        "spec:\n", "spec:\n  mode: global\n"))
    out = swctl("apply", "-f", str(path), *VERIFY).stdout.splitlines()
    assert "overall progress: 3 out of 3 tasks" in out
    assert {line.split(":")[0] for line in out if "running   [" in line} == set(NODES)
    assert out[-1] == "verify: Service converged"
    assert replicas_column(swctl)["glob"] == "3/3"
    err = swctl("scale", "glob=5", expect=1).stderr
    assert err.startswith("error: service glob is global") and "no replica count" in err
    ps = swctl("service", "ps", "glob").stdout.splitlines()
    assert ps[0].split()[:4] == ["ID", "NAME", "IMAGE", "NODE"]
    assert sorted(line.split()[1] for line in ps[1:]) == [f"glob.{n}" for n in NODES]


def test_unplaceable_service_fails_with_the_scheduler_reason(cluster: Swctl) -> None:
    swctl = cluster
    path = swctl.write("stuck.yaml", service("stuck").replace(
        "spec:\n", "spec:\n  placement: {constraints: [node.labels.zone==nowhere]}\n"))
    started = time.monotonic()
    result = swctl("apply", "-f", str(path), "--timeout", "2", expect=1)
    assert time.monotonic() - started < 10
    assert "overall progress: 0 out of 1 tasks" in result.stdout
    err = result.stderr.splitlines()
    assert err[0] == ("error: service/stuck did not converge within 2s: 0 out of 1 tasks "
                      "running")
    assert err[1].startswith("  stuck.1: pending: no suitable node (constraint "
                             "node.labels.zone==nowhere matched 0 of 3 nodes")


def test_detach_returns_without_waiting(cluster: Swctl) -> None:
    swctl = cluster
    path = swctl.write("quick.yaml", service("quick", 2).replace(
        "spec:\n", "spec:\n  placement: {constraints: [node.labels.zone==nowhere]}\n"))
    started = time.monotonic()
    out = swctl("apply", "-f", str(path), "-d").stdout
    assert out == "service/quick created\n"
    assert time.monotonic() - started < 5  # no wait: it could never converge


def test_node_ls_update_and_shortcuts(cluster: Swctl) -> None:
    swctl = cluster
    path = swctl.write("spread.yaml", service("spread", 3))
    swctl("apply", "-f", str(path), *VERIFY)
    listed = swctl("node", "ls").stdout.splitlines()
    assert listed[0].split() == ["ID", "NAME", "STATUS", "AVAILABILITY", "ROLE", "ADDRESS",
                                 "TASKS", "AGE"]
    rows = node_rows(swctl)
    assert sorted(rows) == NODES
    assert sum(int(r[5]) for r in rows.values()) >= 3  # spread's tasks, at least
    assert all(r[1:4] == ["ready", "active", "worker"] for r in rows.values())
    assert swctl("node", "ls", "-q").stdout.split() == NODES
    try:
        out = swctl("node", "update", "n-0", "--label-add", "zone=a", "--label-add", "x=1",
                    "--role", "manager").stdout
        assert out == "node/n-0 updated\n"
        node = yaml.safe_load(swctl("node", "inspect", "n-0").stdout)
        assert node["metadata"]["labels"] == {"zone": "a", "x": "1"}
        assert node["spec"]["role"] == "manager"
        assert swctl("node", "update", "n-0", "--label-rm", "x").stdout == "node/n-0 updated\n"
        err = swctl("node", "update", "n-0", "--label-rm", "nope", expect=1).stderr
        assert 'label "nope" is not set on node n-0 (its labels: zone)' in err
        assert swctl("node", "demote", "n-0").stdout == "node/n-0 demoted\n"
        assert swctl("node", "demote", "n-0").stdout == "node/n-0 already demoted\n"

        # Drain moves the replicated tasks away; the TASKS column follows.
        assert swctl("node", "drain", "n-0").stdout == "node/n-0 drained\n"
        eventually(lambda: node_rows(swctl)["n-0"][2:6:3] == ["drain", "0"], 10,
                   "n-0 drained and empty")
        ps = swctl("service", "ps", "spread").stdout.splitlines()
        current = [line for line in ps[1:] if "\\_" not in line]
        assert len(current) == 3 and all(" n-0 " not in line for line in current)
        assert any("\\_ spread." in line and " n-0 " in line for line in ps[1:])

        err = swctl("node", "drain", "nope", expect=1).stderr
        assert err == ('error: node "nope" not found; known nodes: n-0, n-1, n-2 (list them '
                       "with `swctl node ls`)\n")
    finally:
        swctl("node", "update", "n-0", "--availability", "active", "--label-rm", "zone",
              expect=None)
    assert node_rows(swctl)["n-0"][2] == "active"


def test_scale_refuses_other_kinds_and_bad_counts(cluster: Swctl) -> None:
    swctl = cluster
    assert "only services have a replica count" in swctl(
        "scale", "node/n-0", "--replicas", "2", expect=1).stderr
    assert 'invalid replica count "x"' in swctl("scale", "web=x", expect=1).stderr
    assert "missing --replicas" in swctl("scale", "service/web", expect=1).stderr
