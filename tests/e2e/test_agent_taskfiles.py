"""Secrets and configs delivered into tasks by real agents (issue 14): a secret is readable
at /run/secrets/<target> with the owner and mode asked for, lives on the agent's tmpfs
and nowhere on the node's disk, never shows in ``swctl get``; a config has its content
and mode at its target; an agent killed and restarted keeps serving them; a task naming
a missing secret, or one its keyring does not open, is rejected saying so. Docker
containers and the process driver.

Secrets are written to etcd sealed, as ``swctl`` stores them (``Keyring.seal``); tasks
are written already assigned, as the scheduler commits them.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent import tmpfs
from shoal.agent.process.driver import ProcessExecutor
from shoal.crds import kinds, resource, sealed
from shoal.store import client, etcd_server
from tests.helpers import LoggedProcess, eventually
from tests.integration.agent_support import AgentCluster
from tests.integration.cli_support import Swctl

pytestmark = pytest.mark.timeout(180)

REG = kinds.Registry.builtin()
VALUE = b"hunter2-" + uuid.uuid4().hex.encode()  # unique: found nowhere by chance
CONFIG = "listen 8080\n"


async def put_objects(store: client.Store, ring: sealed.Keyring) -> None:
    secret = resource.new("Secret", "db_pass", "default", spec={
        "sealed": ring.seal(VALUE, "default", "db_pass"), "dataSize": len(VALUE),
        "dataDigest": ring.digest(VALUE)})
    await store.create(REG.lookup("secrets"), secret)
    await store.create(REG.lookup("configs"),
                       resource.new("Config", "site", "default", spec={"data": CONFIG}))
    # Sealed under a key the cluster's keyring does not hold (another cluster's).
    alien = sealed.Keyring.generate()
    await store.create(REG.lookup("secrets"), resource.new("Secret", "alien", "default", spec={
        "sealed": alien.seal(b"x", "default", "alien"), "dataSize": 1,
        "dataDigest": alien.digest(b"x")}))


def template(command: list[str], config_target: str) -> dict[str, Any]:
    return {"image": "shoal/busybox", "command": command,
            "secrets": [{"source": "db_pass", "target": "x", "uid": "1000", "gid": "1000",
                         "mode": 0o400}],
            "configs": [{"source": "site", "target": config_target, "mode": 0o440}]}


class Node:
    """One real agent under a test's prefix, with its own state directory and keyring."""

    def __init__(self, cluster: AgentCluster, name: str, runtime: str, tmp: Path) -> None:
        self.cluster, self.name, self.runtime = cluster, name, runtime
        self.state = tmp / f"state-{name}"
        self.keyring = tmp / "keyring.json"
        self.agent: LoggedProcess | None = None

    @property
    def files_root(self) -> Path:
        return self.state / "taskfiles" / self.name

    def start(self) -> None:
        # The docker agent runs in a mount namespace of its own, as under `ip netns exec`
        # on a netns node: its files must still be where dockerd looks.
        own_ns = ["unshare", "--mount", "--propagation", "slave"]
        argv = [*(own_ns if self.runtime == "docker" else []),
                sys.executable, "-m", "shoal.agent.main", "--etcd", self.cluster.etcd_url,
                "--prefix", self.cluster.prefix, "--name", self.name, "--runtime",
                self.runtime, "--dataplane", "none", "--logs-port", "0",
                "--state-dir", str(self.state), "--keyring", str(self.keyring),
                "--heartbeat-ttl", "2", "--log-format", "console"]
        log = self.cluster.workdir / f"agent-{self.name}-{len(self.cluster.agents)}.log"
        self.agent = LoggedProcess(f"agent-{self.name}", argv, log)
        self.cluster.agents.append(self.agent)

    async def stop(self) -> None:
        """A clean stop (SIGTERM), as swctl down does."""
        assert self.agent is not None
        self.agent.signal(signal.SIGTERM)
        await self.agent.wait(15)


@pytest.fixture
async def cluster(etcd: etcd_server.EtcdServer, tmp_path: Path
                  ) -> AsyncIterator[AgentCluster]:
    try:
        async with AgentCluster.open(etcd.url, f"/t-{uuid.uuid4().hex[:12]}", tmp_path) as c:
            await put_objects(c.store, sealed.ensure(tmp_path / "keyring.json"))
            yield c
    finally:
        unmount_leftovers(tmp_path)


def unmount_leftovers(tmp_path: Path) -> None:
    """A failed test's killed agent leaves its tmpfs mounted: never leave it behind."""
    for root in tmp_path.glob("state-*/taskfiles/*"):
        if tmpfs.is_tmpfs(root):
            tmpfs.unmount(root)


@pytest.fixture
async def process_node(node_name: str) -> AsyncIterator[str]:
    """``node_name``, with every process task it ran removed afterwards."""
    yield node_name
    cleaner = ProcessExecutor(node_name)
    for managed in await cleaner.list_managed():
        await cleaner.remove(managed.task_uid)
    await cleaner.close()


def on_disk(roots: list[Path], needle: bytes) -> list[str]:
    """Files under ``roots`` holding ``needle``, on the filesystems the roots are on: a
    mount point below them (the agent's tmpfs, a container's root) is not the disk."""
    found = []
    for root in roots:
        if not root.exists():
            continue
        device = root.stat().st_dev
        for top, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.lstat(os.path.join(top, d)).st_dev == device]
            for name in files:
                path = os.path.join(top, name)
                try:
                    st = os.lstat(path)
                    if st.st_dev != device or not os.path.isfile(path) or st.st_size > 8 << 20:
                        continue
                    with open(path, "rb") as f:
                        if needle in f.read():
                            found.append(path)
                except OSError:
                    continue
    return found


async def delete_tasks(cluster: AgentCluster, node: Node, names: list[str]) -> None:
    """Delete tasks and wait for their files to go; then stop the agent cleanly, which
    unmounts its tmpfs (nothing is left mounted on the node)."""
    for name in names:
        await cluster.store.delete(REG.lookup("tasks"), name, "default")

    async def removed() -> bool:
        return not any(node.files_root.iterdir())
    await eventually(removed, timeout=30, what="task files removed")
    await node.stop()
    assert not tmpfs.is_tmpfs(node.files_root)


async def test_docker_task_reads_its_secret_and_config_from_the_agent_tmpfs(
        cluster: AgentCluster, docker_client: Any, docker_node: str, tmp_path: Path,
        etcd: etcd_server.EtcdServer) -> None:
    node = Node(cluster, docker_node, "docker", tmp_path)
    node.start()
    await cluster.wait_ready([docker_node])
    # Exits on SIGTERM, so deleting the tasks takes no stop grace period.
    show = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]
    await cluster.create_task("web.1", docker_node, template(show, "/etc/site.conf"))
    for name, secret in (("bad.1", "nope"), ("bad.2", "alien")):
        await cluster.create_task(name, docker_node, {
            "image": "shoal/busybox", "command": show, "secrets": [{"source": secret}]})

    running = await cluster.wait_state("web.1", "running", timeout=60)
    container = docker_client.containers.get(running.status["containerId"])

    def run(cmd: str) -> str:
        code, out = container.exec_run(["sh", "-c", cmd])
        assert code == 0, out
        return str(out.decode())

    # docker exec web.1 cat /run/secrets/x; stat ...
    assert run("cat /run/secrets/x").encode() == VALUE
    assert run("stat -c '%a %u %g' /run/secrets/x /etc/site.conf").split("\n")[:2] == [
        "400 1000 1000", "440 0 0"]
    assert run("cat /etc/site.conf") == CONFIG
    # Read-only, and on the agent's tmpfs: the mount table inside the task says both.
    mounts = {line.split()[1]: line.split() for line in run("cat /proc/mounts").splitlines()}
    assert mounts["/run/secrets/x"][2] == "tmpfs" and "ro" in mounts["/run/secrets/x"][3]
    assert tmpfs.is_tmpfs(node.files_root)
    # Nowhere on the node's disk: not in the agent's state, docker's or etcd's data.
    assert on_disk([node.state, Path("/var/lib/docker"), Path(etcd.data_dir)], VALUE) == []

    # swctl get secrets -o yaml / get tasks -o yaml: no value
    swctl = Swctl(cluster.etcd_url, cluster.prefix, tmp_path)
    for kind in ("secrets", "tasks"):
        assert VALUE.decode() not in swctl("get", kind, "-o", "yaml").stdout

    # A missing secret, or one that does not open, rejects the task saying why.
    bad = await cluster.wait_state("bad.1", "rejected", timeout=30)
    assert bad.status["message"].startswith(
        'secret "nope" in namespace "default" not found: the task needs it at '
        "/run/secrets/nope; create it (swctl secret create nope FILE)")
    alien = await cluster.wait_state("bad.2", "rejected", timeout=30)
    assert alien.status["message"].startswith(
        'Secret "alien" in namespace "default" is sealed under key ')
    assert "which this keyring does not hold" in alien.status["message"]

    # kill -9 the agent, start it again: the task keeps its files, a new one gets them.
    assert node.agent is not None
    node.agent.signal(signal.SIGKILL)
    await node.agent.wait()
    node.start()
    await cluster.create_task("web.2", docker_node, template(show, "/site"))
    second = await cluster.wait_state("web.2", "running", timeout=60)
    assert run("cat /run/secrets/x").encode() == VALUE
    assert (await cluster.task("web.1")).status["state"] == "running"
    code, out = docker_client.containers.get(second.status["containerId"]).exec_run(
        ["cat", "/run/secrets/x", "/site"])
    assert code == 0 and out == VALUE + CONFIG.encode()

    await delete_tasks(cluster, node, ["web.1", "web.2", "bad.1", "bad.2"])


async def test_process_task_sees_its_files_in_its_own_mount_namespace(
        cluster: AgentCluster, process_node: str, tmp_path: Path) -> None:
    node_name = process_node
    node = Node(cluster, node_name, "process", tmp_path)
    node.start()
    await cluster.wait_ready([node_name])
    conf = tmp_path / "etc" / "site.conf"
    job = template(
        # Its digest, not the value: the task's log is on disk.
        ["sh", "-c", f"sha256sum </run/secrets/x; stat -c '%a %u %g' /run/secrets/x {conf}; "
                     f"cat {conf}; sleep 300"], str(conf))
    # The agent runs health checks in the task's namespaces, its mounts included: healthy
    # (so running) only if the check sees the secret too.
    job["healthcheck"] = {"test": ["CMD", "test", "-s", "/run/secrets/x"], "interval": "200ms"}
    await cluster.create_task("job.1", node_name, job)
    running = await cluster.wait_state("job.1", "running", timeout=30)
    log = Path("/var/lib/shoal/process") / node_name / f"{running.metadata.uid}.log"

    async def printed() -> list[str] | None:
        text = log.read_text() if log.exists() else ""
        lines = [line.split(" ", 3)[3] for line in text.splitlines()]
        return lines if len(lines) >= 4 else None
    lines = await eventually(printed, timeout=15, what="the task's output")
    assert lines is not None
    assert lines[:4] == [f"{hashlib.sha256(VALUE).hexdigest()}  -", "400 1000 1000",
                         "440 0 0", CONFIG.strip()]
    # Mounted in the task's namespace only: the host sees an empty placeholder.
    assert conf.read_bytes() == b""
    assert on_disk([node.state, Path("/var/lib/shoal/process") / node_name,
                    Path("/run/secrets")], VALUE) == []

    await delete_tasks(cluster, node, ["job.1"])
