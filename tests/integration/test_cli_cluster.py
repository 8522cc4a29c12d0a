"""``swctl up -d`` / ``swctl down``: a real local cluster from a temporary state dir."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from shoal.cli import cluster
from shoal.store import etcd_server
from tests.integration.cli_support import Swctl


def _wait_until(probe: object, timeout: float = 15.0, what: str = "condition") -> None:
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def test_up_detached_then_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = etcd_server.free_port()
    url = f"http://127.0.0.1:{port}"
    swctl = Swctl(url, "/shoal", tmp_path)
    try:
        up = swctl("up", "-d", "--state-dir", str(state), "--etcd-port", str(port),
                   "--hollow-nodes", "2").stdout
        assert f"etcd ready at {url}" in up
        assert "controller-manager running (pid " in up
        assert "agent running (2 hollow nodes; pid " in up and "2 nodes ready" in up
        record = json.loads((state / "cluster.json").read_text())
        assert record["etcd"] == url
        children = [cluster.Child.from_record(p) for p in record["processes"]]
        assert [c.name for c in children] == ["etcd", "controller-manager", "hollow"]
        assert swctl("node", "ls", "-q").stdout.split() == ["hollow-0", "hollow-1"]
        assert all(c.alive() for c in children)
        # The keyring secrets are sealed under: made private, handed to the agents, and
        # pointed at for the user (it is not where swctl looks by default).
        ring = state / "keyring.json"
        assert ring.stat().st_mode & 0o777 == 0o600
        assert f"export SHOAL_KEYRING={ring}" in up
        agent_argv = Path(f"/proc/{children[2].pid}/cmdline").read_bytes().split(b"\0")
        assert agent_argv[agent_argv.index(b"--keyring") + 1] == str(ring).encode()
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            assert resp.status == 200
        # The cluster is usable, and a second `up` does not start another one.
        swctl("apply", "-f", "-", input="apiVersion: shoal.io/v1\nkind: Config\n"
              "metadata: {name: c}\nspec: {data: x}\n")
        again = swctl("up", "-d", "--state-dir", str(state), "--etcd-port", str(port)).stdout
        assert "already running" in again
    finally:
        down = swctl("down", "--state-dir", str(state))
    assert "etcd stopped" in down.stdout and "controller-manager stopped" in down.stdout
    assert "hollow stopped" in down.stdout
    _wait_until(lambda: not any(c.alive() for c in children), what="all processes gone")
    assert not (state / "cluster.json").exists()
    assert (state / "etcd").is_dir()  # data is kept without --purge
    assert "no cluster is running" in swctl("down", "--state-dir", str(state)).stdout
    swctl("down", "--state-dir", str(state), "--purge")
    assert not state.exists()
