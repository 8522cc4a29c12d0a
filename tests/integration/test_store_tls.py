"""The store against a 3-member etcd cluster serving TLS with client-certificate auth.

One cluster for the module, its CA made by ``shoal.pki``. What a user would notice: the
cluster's own certificates work over every member through one channel (and the lease
keepalive stream); etcd refuses a client without a certificate, with one from another
CA, and plain http, each with an error saying what is wrong; once auth is on, a
certificate whose CN is no etcd user is refused naming the user and how to fix it, a
node user may do only what its role grants, and deleting the user stops its certificate.
The agent, the controller-manager and swctl run against it with --etcd-ca/cert/key (or
$SHOAL_ETCD_CA/CERT/KEY), and the agent serves its log endpoint over TLS (--tls-dir).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from unittest import mock

import pytest

from shoal.cli import logs
from shoal.crds import kinds
from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.pki.bundle import ENV_CA, ENV_CERT, ENV_KEY, Bundle
from shoal.store import client, errors, etcd, etcd_server, leasestream
from tests.helpers import LoggedProcess, eventually, eventually_sync


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd_server.EtcdCluster]:
    c = etcd_server.EtcdCluster(tmp_path_factory.mktemp("etcd-tls"), 3, tls=True)
    c.start_all()
    yield c
    for i in range(len(c.members)):
        c.kill(i)  # a graceful stop waits for leader hand-overs: seconds, for nothing


@pytest.fixture(scope="module")
async def root(cluster: etcd_server.EtcdCluster) -> AsyncIterator[etcd.EtcdClient]:
    c = etcd.EtcdClient(cluster.urls, cluster.client_bundle("root"))
    await c.connect()
    yield c
    await c.close()


async def test_cluster_certificates_work_over_every_member(
        cluster: etcd_server.EtcdCluster, prefix: str) -> None:
    assert cluster.urls.count("https://") == 3
    store = await client.Store.connect(cluster.urls, prefix=prefix,
                                       tls=cluster.client_bundle("root"))
    try:
        await store.raw_put(store.raw_key("k"), b"v")
        for member in cluster.members:  # each member, by its own address, same CA and name
            status = await store.etcd.status(member.url)
            assert status.leader_id
        lease = await store.grant_lease(5)
        stream = leasestream.KeepaliveStream(cluster.urls, cluster.client_bundle("root"))
        try:
            assert (await stream.keepalive([lease], timeout=3.0))[lease] == 5
        finally:
            await stream.close()
    finally:
        await store.close()


def _health(url: str, context: ssl.SSLContext | None) -> None:
    with urllib.request.urlopen(url + "/health", timeout=3, context=context):
        pass


def _bundle_from_other_ca(tmp_path: Path, cluster_ca: Path) -> Bundle:
    other = pki_ca.make_ca()
    cert, key = certs.issue_client(other, "root")
    pki_ca.write_file(tmp_path / "other.crt", pki_ca.cert_pem(cert), 0o644)
    pki_ca.write_file(tmp_path / "other.key", pki_ca.key_pem(key), 0o600)
    return Bundle(cluster_ca, tmp_path / "other.crt", tmp_path / "other.key")


async def test_etcd_refuses_no_certificate_another_ca_and_plain_http(
        cluster: etcd_server.EtcdCluster, tmp_path: Path) -> None:
    member = cluster.members[0]
    ca_file = cluster.client_bundle("root").ca
    # No client certificate: the CA is trusted, the handshake is refused by etcd.
    no_cert = ssl.create_default_context(cafile=str(ca_file))
    no_cert.check_hostname = False
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(_health, member.url, no_cert)
    # A certificate from another CA, even with CN root.
    stranger = etcd.EtcdClient(cluster.urls, _bundle_from_other_ca(tmp_path, ca_file))
    with pytest.raises(errors.TLSRefusedError, match="rejected the client certificate: it must "
                       "be issued by the cluster's CA"):
        await stranger.connect(timeout=2)
    # Plain http: etcd hangs up without an answer, and the client says what to do.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(_health, member.url.replace("https", "http"), None)
    plain = etcd.EtcdClient(cluster.urls.replace("https://", "http://"))
    with pytest.raises(errors.UnavailableError, match="name its endpoints https://"):
        await plain.connect(timeout=1)
    # And a client that trusts another CA does not trust etcd.
    other_ca = tmp_path / "other-ca.crt"
    pki_ca.make_ca().save(other_ca)
    bundle = cluster.client_bundle("root")
    doubting = etcd.EtcdClient(cluster.urls, Bundle(other_ca, bundle.cert, bundle.key))
    with pytest.raises(errors.TLSRefusedError, match="server certificate is not signed"):
        await doubting.connect(timeout=2)
    with pytest.raises(ValueError, match="TLS needs the cluster CA, a client certificate"):
        etcd.EtcdClient(cluster.urls)


async def test_with_auth_on_users_are_their_certificates(
        cluster: etcd_server.EtcdCluster, root: etcd.EtcdClient, prefix: str) -> None:
    assert await root.auth_status() is False
    await root.user_add("root")
    await root.role_add("root")
    await root.user_grant_role("root", "root")
    await root.auth_enable()
    assert await root.auth_status() is True

    # A certificate of this cluster whose CN is no etcd user: refused, saying so.
    ghost = etcd.EtcdClient(cluster.urls, cluster.client_bundle("shoal:node:ghost"))
    await ghost.connect()
    try:
        with pytest.raises(errors.UnknownUserError,
                           match=r'no user "shoal:node:ghost".*join it again with `swctl join`'):
            await ghost.range(f"{prefix}/x".encode())
    finally:
        await ghost.close()

    # A node user may read its own prefix, nothing else, and write nothing.
    user, role = certs.node_user("n1"), "shoal-node-n1"
    own = f"{prefix}/nodes/n1/".encode()
    await root.user_add(user)
    await root.role_add(role)
    await root.role_grant(role, own, etcd.prefix_end(own), read=True)
    await root.user_grant_role(user, role)
    assert await root.role_get(role) == [(own, etcd.prefix_end(own), True, False)]
    await root.put(own + b"task", b"t")
    n1 = etcd.EtcdClient(cluster.urls, cluster.client_bundle(user))
    await n1.connect()
    try:
        kvs, _, _ = await n1.range(own + b"task")
        assert kvs[0].value == b"t"
        with pytest.raises(errors.PermissionDeniedError,
                           match='denied the Put request to user "shoal:node:n1"'):
            await n1.put(own + b"task", b"mine now")
        with pytest.raises(errors.PermissionDeniedError, match="denied the Range request"):
            await n1.range(f"{prefix}/nodes/n2/task".encode())
        # Removing the user (what `swctl node rm` does) stops its certificate.
        await root.user_delete(user)
        with pytest.raises(errors.UnknownUserError, match='no user "shoal:node:n1"'):
            await n1.range(own + b"task")
    finally:
        await n1.close()
        await root.role_delete(role)
    assert user not in await root.user_list()

    # A member restarted with auth on comes back healthy (its probes use its peer cert).
    follower = next(i for i in range(3) if i != cluster.leader())
    cluster.kill(follower)
    cluster.start(follower)
    assert (await root.status(cluster.members[follower].url)).leader_id


async def test_agent_controller_manager_and_swctl_take_the_tls_options(
        cluster: etcd_server.EtcdCluster, root: etcd.EtcdClient, prefix: str,
        tmp_path: Path) -> None:
    bundle = cluster.client_bundle("root")
    flags = ["--etcd-ca", str(bundle.ca), "--etcd-cert", str(bundle.cert),
             "--etcd-key", str(bundle.key)]
    env = {ENV_CA: str(bundle.ca), ENV_CERT: str(bundle.cert), ENV_KEY: str(bundle.key)}
    node_dir = tmp_path / "node-pki"  # the node's own certificate, for its log endpoint
    assert cluster.ca is not None
    cluster.ca.save(node_dir / "ca.crt")
    cert, key = certs.issue_client(cluster.ca, certs.node_user("tls-n1"))
    pki_ca.write_file(node_dir / "node.crt", pki_ca.cert_pem(cert), 0o644)
    pki_ca.write_file(node_dir / "node.key", pki_ca.key_pem(key), 0o600)
    agent = LoggedProcess("agent", [
        sys.executable, "-m", "shoal.agent.main", "--etcd", cluster.urls, *flags,
        "--tls-dir", str(node_dir), "--logs-port", "0",
        "--prefix", prefix, "--name", "tls-n1", "--runtime", "hollow", "--heartbeat-ttl", "2",
        "--log-format", "console"], tmp_path / "agent.log")
    with mock.patch.dict(os.environ, env):  # the controller-manager reads the environment
        manager = LoggedProcess("manager", [
            sys.executable, "-m", "shoal.cli", "--etcd", cluster.urls, "--prefix", prefix,
            "controller-manager"], tmp_path / "manager.log")
    swctl = [sys.executable, "-m", "shoal.cli", "--etcd", cluster.urls, "--prefix", prefix]
    try:
        def node_ready() -> str:
            out = subprocess.run([*swctl, *flags, "node", "ls"], capture_output=True,
                                 text=True, timeout=30)
            return out.stdout if "tls-n1" in out.stdout and "ready" in out.stdout else ""
        await asyncio.to_thread(eventually_sync, node_ready, 30, "tls-n1 ready in node ls")
        leases = f"{prefix}/leases/controllers/".encode()

        async def leading() -> bool:
            kvs, _, _ = await root.range(leases, etcd.prefix_end(leases))
            return bool(kvs)
        await eventually(leading, timeout=20, what="the controller-manager leading over TLS")
        # The agent serves its log endpoint over TLS, to the admin certificate.
        store = await client.Store.connect(cluster.urls, prefix=prefix, tls=bundle)
        try:
            node = await store.get(kinds.Registry.builtin().lookup("nodes"), "tls-n1")
        finally:
            await store.close()
        endpoint = str(node.status["logsEndpoint"])
        assert endpoint.startswith("https://")
        with pytest.raises(logs.NoWorkloadError, match="no workload for task nope"):
            async for _ in logs.fetch(endpoint, "tls-n1", "nope", tls=bundle):
                pass
        # swctl without a certificate, against https endpoints: refused before any call.
        bare = await asyncio.to_thread(
            subprocess.run, [*swctl, "node", "ls"], capture_output=True, text=True,
            timeout=30, env={k: v for k, v in os.environ.items()
                             if not k.startswith("SHOAL_ETCD")})
        assert bare.returncode == 1
        assert "TLS needs the cluster CA, a client certificate and its key" in bare.stderr
    except BaseException:
        print(agent.text()[-3000:], manager.text()[-3000:], sep="\n---\n")
        raise
    finally:
        await asyncio.gather(agent.stop(), manager.stop())
