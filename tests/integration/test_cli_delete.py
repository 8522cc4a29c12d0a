"""``swctl delete``: by name, by manifest, by selector, NotFound, and finalizers."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.crds import kinds
from shoal.store import client, etcd_server
from tests.integration.cli_support import Swctl, service


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


def test_delete_by_name_manifest_and_selector(swctl: Swctl) -> None:
    path = swctl.write("stack.yaml", "---\n".join(
        [service("a"), service("b"), service("c", tier="back"), service("d", tier="back")]))
    swctl("apply", "-d", "-f", str(path))
    assert swctl("delete", "svc", "a").stdout == "service/a deleted\n"
    # Every name is attempted; a missing one fails the command at the end.
    result = swctl("delete", "services", "a", "b", expect=1)
    assert result.stdout == "service/b deleted\n"
    assert result.stderr.startswith("error: services/default/a not found")
    swctl("delete", "svc", "a", "--ignore-not-found")
    assert swctl("delete", "svc", "-l", "tier=back").stdout.splitlines() == [
        "service/c deleted", "service/d deleted"]
    swctl("apply", "-d", "-f", str(path))
    assert swctl("delete", "-f", str(path)).stdout.splitlines() == [
        "service/a deleted", "service/b deleted", "service/c deleted", "service/d deleted"]
    assert swctl("get", "svc", "-o", "name").stdout == ""
    again = swctl("delete", "-f", str(path), expect=1)
    assert again.stderr.count("not found") == 4


async def test_delete_waits_for_finalizers(swctl: Swctl, store: client.Store) -> None:
    path = swctl.write("held.yaml", """\
        apiVersion: shoal.io/v1
        kind: Config
        metadata: {name: held, finalizers: [example.com/cleanup]}
        spec: {data: x}
        """)
    swctl("apply", "-d", "-f", str(path))
    out = swctl("delete", "config", "held").stdout
    assert out == "config/held deletion requested (waiting for finalizers: example.com/cleanup)\n"
    info = kinds.Registry.builtin().lookup("configs")
    obj = await store.get(info, "held")
    assert obj.metadata.deletionTimestamp and obj.metadata.finalizers == ["example.com/cleanup"]
    described = swctl("describe", "config", "held").stdout
    assert "Deletion Requested:" in described
    # The owner of the finalizer lets go; the store then deletes the object.
    obj.metadata.finalizers = []
    await store.update(info, obj)
    swctl("get", "config", "held", expect=1)


def test_delete_file_removes_users_before_what_they_use(swctl: Swctl) -> None:
    # The file names the network first, as stack files often do; deleting it first would
    # pull the network from under the service's running tasks.
    path = swctl.write("web.yaml", """\
        apiVersion: shoal.io/v1
        kind: Network
        metadata: {name: backend}
        spec: {driver: overlay}
        ---
        apiVersion: shoal.io/v1
        kind: Service
        metadata: {name: web}
        spec:
          replicas: 1
          networks: [backend]
          template: {image: busybox, command: [sleep, "3600"]}
        """)
    swctl("apply", "-d", "-f", str(path))
    assert swctl("delete", "-f", str(path)).stdout.splitlines() == [
        "service/web deleted", "network/backend deleted"]
