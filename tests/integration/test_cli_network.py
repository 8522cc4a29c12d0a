"""``swctl network`` (ls, inspect, create, rm refused while in use) and the published-port
check of ``swctl apply``, against the real etcd (the allocator's status is written by
hand here; tests/integration/test_allocator.py runs the allocator itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.crds import kinds, resource
from shoal.store import client, errors, etcd_server
from tests.integration.cli_support import Swctl

REG = kinds.Registry.builtin()


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


def svc(name: str, ports: str = "", networks: str = "") -> str:
    return (f"apiVersion: shoal.io/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
            f"spec:\n  template: {{image: busybox}}\n"
            + (f"  networks: [{networks}]\n" if networks else "")
            + (f"  endpoint:\n    ports: [{ports}]\n" if ports else ""))


async def test_create_ls_inspect_rm(swctl: Swctl, store: client.Store) -> None:
    assert swctl("network", "create", "appnet", "--subnet", "10.0.9.0/24",
                 "--attachable").stdout == "network/appnet created\n"
    swctl.write("net.yaml", "apiVersion: shoal.io/v1\nkind: Network\nmetadata: {name: b}\n")
    swctl("apply", "-d", "-f", "net.yaml")
    # Before the allocator ran: what was asked for, or pending.
    rows = [line.split() for line in swctl("network", "ls").stdout.splitlines()]
    assert rows == [["NAME", "DRIVER", "SUBNET", "VNI", "SCOPE", "ATTACHABLE"],
                    ["appnet", "overlay", "10.0.9.0/24", "<pending>", "swarm", "true"],
                    ["b", "overlay", "<pending>", "<pending>", "swarm", "false"]]
    info = REG.lookup("networks")
    b = await store.get(info, "b")
    b.status.update({"subnet": "10.0.1.0/24", "gateway": "10.0.1.1", "vni": 4097})
    await store.update(info, b)
    assert swctl("network", "ls").stdout.splitlines()[2].split() == [
        "b", "overlay", "10.0.1.0/24", "4097", "swarm", "false"]
    assert swctl("network", "ls", "-q").stdout.split() == ["appnet", "b"]
    assert "vni: 4097" in swctl("network", "inspect", "b", "-o", "yaml").stdout
    missing = swctl("network", "inspect", "nope", expect=1)
    assert 'network "nope" not found; known networks: appnet, b' in missing.stderr
    dup = swctl("network", "create", "b", expect=1)
    assert "network b already exists" in dup.stderr

    # In use by a service (which would start tasks on it) and by a task: refused, both
    # listed; nothing removed, not even the unused network named alongside.
    swctl.write("web.yaml", svc("web", networks="b"))
    swctl("apply", "-d", "-f", "web.yaml")
    task = resource.new("Task", "web.1.x", "default", {
        "serviceName": "web", "nodeName": "n1", "template": {"image": "busybox"},
        "networks": [{"name": "b", "addresses": ["10.0.1.2/24"]}]})
    task.status = {"state": "running"}
    await store.create(REG.lookup("tasks"), task)
    refused = swctl("network", "rm", "appnet", "b", expect=1)
    assert refused.stderr.splitlines() == [
        "error: network b is in use by 1 task: default/web.1.x (n1); and by service "
        "default/web; remove or update those services first",
        "error: nothing was removed"]
    assert swctl("network", "ls", "-q").stdout.split() == ["appnet", "b"]
    # The task ended and the service left the network: now it goes.
    task = await store.get(REG.lookup("tasks"), "web.1.x", "default")
    task.status["state"] = "shutdown"
    await store.update(REG.lookup("tasks"), task)
    swctl.write("web.yaml", svc("web"))
    swctl("apply", "-d", "-f", "web.yaml")
    assert swctl("network", "rm", "b", "appnet").stdout.splitlines() == [
        "network/b removed", "network/appnet removed"]
    with pytest.raises(errors.NotFoundError):
        await store.get(info, "b")


async def test_apply_rejects_a_published_port_held_by_another_service(
        swctl: Swctl, store: client.Store) -> None:
    swctl.write("api.yaml", svc("api", ports="{target: 80, published: 8080}"))
    swctl("apply", "-d", "-f", "api.yaml")
    # The allocator picked 30000 for another service's port: held as well.
    swctl.write("picked.yaml", svc("picked", ports="{target: 80}"))
    swctl("apply", "-d", "-f", "picked.yaml")
    info = REG.lookup("services")
    picked = await store.get(info, "picked", "default")
    picked.status["endpoint"] = {"mode": "vip", "virtualIPs": [], "ports": [
        {"protocol": "tcp", "target": 80, "published": 30000, "mode": "ingress"}]}
    await store.update(info, picked)

    swctl.write("web.yaml", svc("web", ports="{target: 80, published: 8080}"))
    refused = swctl("apply", "-d", "-f", "web.yaml", expect=1)
    assert refused.stderr.splitlines()[0].startswith(
        "error: spec.endpoint.ports[0].published: port 8080/tcp is already published by "
        "service default/api (services/default/web, ")
    assert refused.stderr.splitlines()[-1] == (
        "error: nothing was written: free the port or publish another one")
    with pytest.raises(errors.NotFoundError):
        await store.get(info, "web", "default")
    swctl.write("web.yaml", svc("web", ports="{target: 80, published: 30000}"))
    assert "published by service default/picked" in swctl(
        "apply", "-d", "-f", "web.yaml", expect=1).stderr
    # Another protocol, or host mode on both sides, is fine; so is re-applying api, and
    # moving the port from api to web in one apply.
    swctl.write("web.yaml", svc("web", ports="{target: 80, published: 8080, protocol: udp}"))
    swctl("apply", "-d", "-f", "web.yaml")
    swctl.write("h.yaml", svc("h1", ports="{target: 80, published: 9000, mode: host}")
                + "---\n" + svc("h2", ports="{target: 80, published: 9000, mode: host}"))
    swctl("apply", "-d", "-f", "h.yaml")
    swctl("apply", "-d", "-f", "api.yaml")
    swctl.write("move.yaml", svc("api", ports="{target: 80, published: 8081}") + "---\n"
                + svc("web", ports="{target: 80, published: 8080}"))
    swctl("apply", "-d", "-f", "move.yaml")
    # Two services of one apply claiming one port: both named.
    swctl.write("two.yaml", svc("x", ports="{target: 1, published: 7000}") + "---\n"
                + svc("y", ports="{target: 1, published: 7000}"))
    both = swctl("apply", "-d", "-f", "two.yaml", expect=1).stderr
    assert "port 7000/tcp is already published by service default/y" in both
    assert "port 7000/tcp is already published by service default/x" in both
