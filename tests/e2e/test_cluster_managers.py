"""``swctl up -d --nodes 4 --managers 3``: a cluster built on one machine the way machines
build one -- init in the first namespace node, join (manager token) in two more, join
(worker token) in the last -- then used through the first node's data dir, as an
operator on that machine would, and taken down with ``swctl down``.

What a user would notice: three managers in MANAGER STATUS, tasks placed on every node,
the cluster still answering after the leading manager's etcd member is SIGKILLed, and
nothing left behind by ``down``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.upcluster import free_underlay
from tests.helpers import eventually_sync

PREFIX = "jm"


def _swctl(env: dict[str, str], *args: str, expect: int = 0) -> str:
    proc = subprocess.run([sys.executable, "-m", "shoal.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == expect, f"swctl {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _statuses(env: dict[str, str]) -> dict[str, str]:
    lines = _swctl(env, "node", "ls").splitlines()
    start = lines[0].index("MANAGER STATUS")
    return {line.split()[1]: line[start:].split()[0] if line[start:].split()[0] in (
        "Leader", "Reachable", "Unreachable") else "" for line in lines[1:]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    state = tmp_path_factory.mktemp("managers")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    bridge = f"shoal-{PREFIX}{os.getpid() % 1000}"
    out = _swctl(base, "up", "-d", "--state-dir", str(state), "--nodes", "4", "--managers",
                 "3", "--runtime", "process", "--underlay", free_underlay(), "--bridge",
                 bridge, "--node-prefix", PREFIX)
    assert f"{PREFIX}-3 joined as a manager" in out and f"{PREFIX}-4 joined as a worker" in out
    env = dict(base, SHOAL_DATA_DIR=str(state / "nodes" / f"{PREFIX}-1"))
    try:
        yield env, state
    finally:
        _swctl(base, "down", "--state-dir", str(state), "--purge")


def test_three_managers_serve_and_survive_the_leader_member(
        cluster: tuple[dict[str, str], Path]) -> None:
    env, state = cluster
    statuses = eventually_sync(lambda: (s := _statuses(env)) and len(s) == 4 and s,
                               timeout=20, what="four nodes listed")
    assert sorted(statuses.values()) == ["", "Leader", "Reachable", "Reachable"]
    _swctl(env, "service", "create", "--name", "naps", "--replicas", "4",
           "--verify-window", "0.5", "busybox", "sleep", "600")
    nodes = {line.split()[3] for line in _swctl(env, "service", "ps", "naps").splitlines()[1:]}
    assert len(nodes) == 4  # spread over every node, managers included

    # The first manager's data dir learns the members that joined after it (role-watch).
    node_json = state / "nodes" / f"{PREFIX}-1" / "node.json"
    eventually_sync(lambda: len(json.loads(node_json.read_text())["endpoints"]) == 3,
                    timeout=10, what="every member in node.json")
    leader = next(n for n, s in statuses.items() if s == "Leader")
    procs = json.loads((state / "nodes" / leader / "processes.json").read_text())["processes"]
    os.kill(next(p["pid"] for p in procs if p["name"] == "etcd"), signal.SIGKILL)
    after = eventually_sync(
        lambda: (s := _statuses(env))[leader] == "Unreachable" and "Leader" in s.values()
        and s, timeout=30, what="a new leader")
    assert sorted(after.values()) == ["", "Leader", "Reachable", "Unreachable"]
    _swctl(env, "scale", "naps=2", "--verify-window", "0.5")
