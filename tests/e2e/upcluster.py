"""A cluster made by ``swctl up -d --nodes 3`` exactly as a user makes one, for the
end-to-end tests that drive it as a user does (``test_cluster_docker``,
``test_tutorial_swarm``).

It owns bringing the cluster up under names and addresses of the run's own
(``--node-prefix``, ``--bridge``, a free ``--underlay``, its own etcd port and key
prefix), so it never touches a cluster someone else runs on the machine; tearing it down
with ``swctl down`` whatever happened (logs printed first when a test failed); and
:class:`Cluster`, the handle tests poke it through: ``swctl`` with the cluster's
environment, the tasks in etcd, the containers in dockerd. Every wait is :func:`until`,
a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.exec.executor import LABEL_TASK_UID
from shoal.cli import netnodes
from shoal.crds import kinds, resource
from shoal.crds import taskstates as ts
from shoal.store import client, etcd_server
from tests.integration.cli_support import command

REG = kinds.Registry.builtin()
TASKS = REG.lookup("tasks")
NODES = REG.lookup("nodes")


def free_underlay() -> str:
    """A /24 in 172.31.200-249 that overlaps nothing on the host."""
    used = []
    for args in (["-4", "addr", "show"], ["-4", "route", "show"]):
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True).stdout
        for item in json.loads(out or "[]"):
            for addr in item.get("addr_info") or []:
                used.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}",
                                                 strict=False))
            dst = item.get("dst")
            if dst and dst != "default":
                used.append(ipaddress.ip_network(dst, strict=False))
    start = secrets.randbelow(50)  # parallel runs rarely try the same range first
    for third in [200 + (start + i) % 50 for i in range(50)]:
        net = ipaddress.ip_network(f"172.31.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise AssertionError("no free /24 in 172.31.200.0-172.31.249.0 for the underlay")



@dataclass
class Cluster:
    """The cluster under test and what the tests need to poke it."""

    tag: str
    state_dir: Path
    etcd_port: int
    prefix: str
    underlay: str
    bridge: str
    store: client.Store
    docker: Any
    proc_node: netnodes.NetNode | None = None
    restarted: list[subprocess.Popen[bytes]] = field(default_factory=list)
    up: subprocess.CompletedProcess[str] | None = None  # what `swctl up` printed

    @property
    def nodes(self) -> list[str]:
        return [f"{self.tag}-{i}" for i in (1, 2, 3)]

    @property
    def etcd(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def env(self) -> dict[str, str]:
        # The keyring `up` made, so swctl seals and opens secrets as the agents do.
        return dict(os.environ, SHOAL_ETCD=self.etcd, SHOAL_PREFIX=self.prefix,
                    SHOAL_KEYRING=str(self.state_dir / "keyring.json"))

    def swctl(self, *args: str, expect: int | None = 0, input: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(command(*args), input=input, capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if expect is not None:
            assert proc.returncode == expect, (
                f"swctl {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def apply(self, *docs: dict[str, Any], wait: bool = False,
              expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        text = "\n---\n".join(json.dumps(d) for d in docs)
        flags = ["--verify-window", "0.5", "--timeout", "60"] if wait else ["-d"]
        return self.swctl("apply", "-f", "-", *flags, input=text, expect=expect, timeout=90)

    def cluster_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "cluster.json").read_text())
        return data

    def agent_record(self, node: str) -> dict[str, Any]:
        for proc in self.cluster_json()["processes"]:
            if proc["name"] == f"agent-{node}":
                return dict(proc)
        raise AssertionError(f"no agent for {node} in cluster.json")

    def restart_agent(self, node: str) -> subprocess.Popen[bytes]:
        """The node's agent again, exactly as `up` started it (same argv)."""
        record = self.agent_record(node)
        with open(self.state_dir / "logs" / f"agent-{node}.log", "ab") as out:
            proc = subprocess.Popen(record["argv"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=out, start_new_session=True)
        self.restarted.append(proc)
        return proc

    # --- etcd ---

    async def tasks(self, service: str) -> list[resource.Resource]:
        objs, _ = await self.store.list(TASKS, "default")
        return [t for t in objs if ts.service_name(t) == service]

    async def running(self, service: str) -> list[resource.Resource]:
        return [t for t in await self.tasks(service)
                if ts.is_active_desired(t) and ts.is_running(t)]

    async def node_state(self, node: str) -> str:
        obj = await self.store.get(NODES, node)
        return str(obj.status.get("state"))

    # --- docker ---

    def containers(self, **labels: str) -> list[Any]:
        import docker.errors

        filters = [f"{k}={v}" for k, v in labels.items()]
        for _ in range(10):
            try:
                return list(self.docker.containers.list(all=True, filters={"label": filters}))
            except docker.errors.NotFound:
                continue  # removed between docker's listing and its inspection: again
        raise AssertionError(f"containers with {labels} kept vanishing while listed")

    def containers_of_task(self, uid: str) -> list[Any]:
        return self.containers(**{LABEL_TASK_UID: uid})


async def until(probe: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.1) -> Any:
    """Poll an async (or plain) probe until truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


def down(state_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command("down", "--state-dir", str(state_dir), "--timeout", "5"),
                          capture_output=True, text=True, env=env, timeout=120)


def dump_logs(state_dir: Path) -> None:
    for log in sorted((state_dir / "logs").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-25:]
        print(f"--- {log.name} (last {len(text)} lines)\n" + "\n".join(text))


def run(argv: list[str], env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)



@contextlib.asynccontextmanager
async def started(docker_client: Any, tag: str, state_dir: Path,
                  request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """``swctl up -d --nodes 3 --runtime docker`` under the run's own names; ``swctl
    down`` on the way out, whatever happened (the logs printed first if a test failed)."""
    if os.geteuid() != 0:
        pytest.fail("the namespace cluster needs root", pytrace=False)
    port = etcd_server.free_port()
    underlay, bridge, prefix = free_underlay(), f"shoal-{tag}", f"/e2e-{tag}"
    env = dict(os.environ, SHOAL_PREFIX=prefix)
    t0 = time.monotonic()
    up = run(command("up", "-d", "--nodes", "3", "--runtime", "docker", "--node-prefix",
                     tag, "--bridge", bridge, "--underlay", underlay, "--etcd-port",
                     str(port), "--state-dir", str(state_dir)), env)
    print(f"swctl up --nodes 3: {time.monotonic() - t0:.1f}s\n{up.stdout}{up.stderr}")
    store: client.Store | None = None
    made: Cluster | None = None
    failures = request.session.testsfailed
    try:
        assert up.returncode == 0, f"swctl up failed:\n{up.stdout}\n{up.stderr}"
        store = await client.Store.connect(f"http://127.0.0.1:{port}", prefix=prefix)
        made = Cluster(tag, state_dir, port, prefix, underlay, bridge, store, docker_client,
                       up=up)
        yield made
    finally:
        if request.session.testsfailed != failures:
            dump_logs(state_dir)  # before `down`, while the processes are still there
        gone = down(state_dir, env)
        if gone.returncode != 0:
            print(f"swctl down failed:\n{gone.stdout}\n{gone.stderr}")
            dump_logs(state_dir)
        for proc in made.restarted if made is not None else ():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)  # agents restarted by a test: `down` ended them
        if store is not None:
            await store.close()
