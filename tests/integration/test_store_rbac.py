"""A worker's etcd role (``shoal.store.rbac``) on a real etcd with TLS and auth on.

The worker's certificate is tried against what it must not do -- read another node's
secret, write a Service spec, write another node's status -- and each is refused by
etcd itself; then a real agent runs as that worker, with only its certificate, and
carries its task to running (its report says so), so the role is also enough.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.crds import kinds, resource
from shoal.store import client, errors, etcd_server, projections, rbac
from tests.helpers import LoggedProcess, eventually

REG = kinds.Registry.builtin()
TASKS, SERVICES, NODES = (REG.lookup(k) for k in ("tasks", "services", "nodes"))
PREFIX = "/rbac"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd_server.EtcdCluster]:
    c = etcd_server.EtcdCluster(tmp_path_factory.mktemp("etcd-rbac"), 1, tls=True)
    c.start_all()
    yield c
    c.kill(0)


@pytest.fixture(scope="module")
async def root(cluster: etcd_server.EtcdCluster) -> AsyncIterator[client.Store]:
    """The cluster's root, auth on, and the roles of workers n1 and n2 applied."""
    store = await client.Store.connect(cluster.urls, PREFIX, tls=cluster.client_bundle())
    await rbac.enable_auth(store.etcd)
    for node in ("n1", "n2"):
        await rbac.apply_role(store.etcd, rbac.roles_for_node(PREFIX, node))
    await rbac.apply_role(store.etcd, rbac.roles_for_node(PREFIX, "n1"))  # again: harmless
    yield store
    await store.close()


async def worker(cluster: etcd_server.EtcdCluster, node: str) -> client.Store:
    return await client.Store.connect(cluster.urls, PREFIX,
                                      tls=cluster.client_bundle(rbac.user_name(node)))


async def test_a_worker_certificate_is_refused_what_is_not_its_own(
        cluster: etcd_server.EtcdCluster, root: client.Store) -> None:
    svc = await root.create(SERVICES, resource.new("Service", "web", None, spec={
        "template": {"image": "x"}}))
    mine = projections.node_prefix(PREFIX, "n1") + b"secrets/default/own"
    theirs = projections.node_prefix(PREFIX, "n2") + b"secrets/default/db"
    await root.raw_put(mine, b'{"kind": "Secret"}')
    await root.raw_put(theirs, b'{"kind": "Secret"}')
    n1 = await worker(cluster, "n1")
    try:
        assert (await n1.raw_get(mine)) is not None  # its own copy: yes
        with pytest.raises(errors.PermissionDeniedError, match="denied the Range request"):
            await n1.raw_get(theirs)  # another node's secret
        with pytest.raises(errors.PermissionDeniedError):
            await n1.get(SERVICES, "web")  # no object of the registry's specs, even to read
        svc.spec["replicas"] = 100
        with pytest.raises(errors.PermissionDeniedError, match="denied the Txn request"):
            await n1.update(SERVICES, svc)  # a Service spec
        with pytest.raises(errors.PermissionDeniedError):
            await n1.raw_put(projections.node_report_key(PREFIX, "n2"), b"{}")  # n2's status
        with pytest.raises(errors.PermissionDeniedError):
            await n1.create(NODES, resource.new("Node", "n2"))  # nor its Node
        await n1.raw_put(projections.node_report_key(PREFIX, "n1"), b"{}")  # its own: yes
    finally:
        await n1.close()
    assert (await root.get(SERVICES, "web")).spec.get("replicas") is None


async def test_an_agent_with_only_its_certificate_runs_its_task(
        cluster: etcd_server.EtcdCluster, root: client.Store, tmp_path: Path) -> None:
    bundle = cluster.client_bundle(rbac.user_name("n1"))
    agent = LoggedProcess("agent-n1", [
        sys.executable, "-m", "shoal.agent.main", "--etcd", cluster.urls, "--prefix", PREFIX,
        "--etcd-ca", str(bundle.ca), "--etcd-cert", str(bundle.cert), "--etcd-key",
        str(bundle.key), "--name", "n1", "--runtime", "hollow", "--heartbeat-ttl", "2",
        "--hollow-start-delay", "0.05", "--log-format", "console"], tmp_path / "agent.log")
    try:
        await root.create(TASKS, resource.new("Task", "job.1", None, spec={
            "nodeName": "n1", "desiredState": "running",
            "template": {"image": "shoal/busybox", "command": ["sleep", "60"]}}))
        report_key = projections.report_key(PREFIX, "n1", "default", "job.1")

        async def running() -> bool:
            kv = await root.raw_get(report_key)
            found = projections.decode_report(kv.value) if kv is not None else None
            return found is not None and found[1].get("state") == "running"
        await eventually(running, 20, what="n1's agent reports its task running")
        beat = await root.raw_get(f"{PREFIX}/heartbeats/n1".encode())
        assert beat is not None and beat.lease  # its heartbeat, on its own lease
        assert "denied" not in agent.text()
    except BaseException:
        print(*agent.text().splitlines()[-30:], sep="\n")
        raise
    finally:
        await agent.stop()
