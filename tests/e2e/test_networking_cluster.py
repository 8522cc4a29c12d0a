"""Networking end to end: three namespace nodes, each with its own docker agent, the
real controllers, real containers (shoal/busybox).

One scenario, in order (each step builds on the previous one's state):

1. every node reports its dataplane backend (``status.dataplane``);
2. tasks on different nodes reach each other by address over VXLAN;
3. containers get the node's DNS responder in /etc/resolv.conf; ``web`` resolves to the
   VIP, ``tasks.web`` to every task; web's alias ``www`` likewise, and a client reaches
   web by it;
4. connections to the VIP are spread over the tasks of all three nodes;
5. the published port answers on all three nodes' underlay addresses, from outside; a
   host-mode port only on the node running its task;
6. a long-lived connection through a VIP survives SIGKILL and restart of its node's
   agent, and the restarted agent changes nothing in the overlay and writes nothing to
   its balancer's nftables table (it adopts it);
7. scaling down removes the endpoint from VIP, DNS and the mesh;
8. removing the services leaves no Shoal link and no nftables table on any node; the
   lab's namespaces go with it (checked by the fixture).
"""

from __future__ import annotations

import collections
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.crds import admission, kinds
from shoal.store import client, errors, etcd_server
from tests.e2e.netcluster import NETTOOL, dump
from tests.e2e.netlab import Lab, have_netns_privileges
from tests.e2e.nscluster import NsCluster, remove_containers
from tests.e2e.test_lb_nftables_netlink import Monitor
from tests.helpers import eventually
from tests.integration.cli_support import Swctl

pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2")

REG = kinds.Registry.builtin()
IMAGE = "shoal/busybox"
HTTPD = ["sh", "-c", "hostname > /www/index.html && exec httpd -f -p 80 -h /www"]


async def apply(store: client.Store, doc: dict[str, Any]) -> None:
    obj = admission.admit(doc, REG)
    info = REG.by_kind(obj.kind)
    try:
        await store.create(info, obj)
    except errors.AlreadyExistsError:
        live = await store.get(info, obj.name, obj.namespace)
        live.spec = obj.spec
        await store.update(info, live)


def service(name: str, command: list[str], replicas: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "shoal.io/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "networks": ["appnet"],
                     "template": {"image": IMAGE, "command": command,
                                  "stopGracePeriod": "1s"}, **spec}}


def pinned(node: str) -> dict[str, Any]:
    return {"placement": {"constraints": [f"node.labels.node=={node}"]}}


async def test_networking_cluster(etcd: etcd_server.EtcdServer, prefix: str,
                                  tmp_path: Path, lab: Lab, docker_client: Any) -> None:
    started = time.monotonic()
    names: list[str] = []
    try:
        async with NsCluster.open_ns(etcd.url, prefix, tmp_path, lab) as c:
            names = c.names
            await scenario(c, docker_client)
    finally:
        remove_containers(docker_client, names)
    elapsed = time.monotonic() - started
    print(f"networking scenario took {elapsed:.1f}s")


async def scenario(c: NsCluster, docker: Any) -> None:
    store = c.store
    c.start_manager()
    for i in range(3):
        c.start_node_agent(i)
    await c.wait_ready(c.names, timeout=30)

    # 1. The backend each node balances with, for `swctl get nodes -o wide`.
    async def backends() -> dict[str, Any] | None:
        found = {n: (await c.node(n)).status.get("dataplane") for n in c.names}
        return found if None not in found.values() else None
    assert set((await eventually(backends, timeout=20)).values()) <= {"nftables", "ipvs"}

    await apply(store, {"apiVersion": "shoal.io/v1", "kind": "Network",
                        "metadata": {"name": "appnet"}, "spec": {}})
    await apply(store, service("web", HTTPD, 3, placement={"maxReplicasPerNode": 1},
                               endpoint={"ports": [{"target": 80, "published": 8080}]},
                               networks=[{"name": "appnet", "aliases": ["www"]}]))
    await apply(store, service("echo", ["nc", "-ll", "-p", "7000", "-e", "cat"],
                               endpoint={"ports": [{"target": 7000, "published": 7001,
                                                    "mode": "host"}]}, **pinned("n2")))
    await apply(store, service("client", ["sleep", "3600"], **pinned("n1")))

    async def all_running() -> bool:
        return (len(await c.running("web")) == 3 and len(await c.running("echo")) == 1
                and len(await c.running("client")) == 1)
    await eventually(all_running, timeout=60, interval=0.2, what="services running")
    wide = swctl(c, "get", "nodes", "-o", "wide").splitlines()
    assert "DATAPLANE" in wide[0].split()
    assert all(line.split()[wide[0].split().index("DATAPLANE")] in ("nftables", "ipvs")
               for line in wide[1:]), wide
    networks = {row.split()[0]: row.split() for row in swctl(c, "network", "ls").splitlines()}
    assert networks["ingress"][2] == "10.255.0.0/20" and networks["appnet"][3].isdigit()
    web = await c.running("web")
    assert {t.spec["nodeName"] for t in web} == set(c.names)
    hostnames = {t.status["containerId"][:12]: t for t in web}
    (client_task,) = await c.running("client")
    (echo_task,) = await c.running("echo")
    assert echo_task.spec["nodeName"] == c.names[1]
    client_pid = docker.containers.get(client_task.status["containerId"]).attrs["State"]["Pid"]
    services = {s.name: s for s in (await store.list(REG.lookup("services"), "default"))[0]}
    vip = {name: s.status["endpoint"]["virtualIPs"][0]["address"]
           for name, s in services.items()}

    # 2. Task to task by address, across nodes (n1 -> n1, n2, n3).
    for task in web:
        got = c.nettool(client_pid, "http", c.address(task, "appnet"), "80", "1")
        assert got == [task.status["containerId"][:12]], (task.spec["nodeName"], got)

    # 3. DNS through the container's own resolver configuration.
    client_container = docker.containers.get(client_task.status["containerId"])
    network = await store.get(REG.lookup("networks"), "appnet")
    node_address = network.status["nodeAddresses"][client_task.spec["nodeName"]]
    resolv = client_container.exec_run(["cat", "/etc/resolv.conf"]).output.decode()
    assert f"nameserver {node_address}" in resolv
    assert lookup(client_container, "web") == [vip["web"]]
    assert sorted(lookup(client_container, "tasks.web")) == sorted(
        c.address(t, "appnet") for t in web)
    assert lookup(client_container, "echo.default") == [vip["echo"]]
    # web's alias on appnet answers like its name, and reaches it by that name.
    assert lookup(client_container, "www") == [vip["web"]]
    assert sorted(lookup(client_container, "tasks.www")) == sorted(
        c.address(t, "appnet") for t in web)
    reply = client_container.exec_run(
        ["sh", "-c", r"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 www 80"]).output.decode()
    assert reply.split()[-1] in hostnames, reply

    # 4. The VIP spreads connections over the tasks of all three nodes.
    seen = collections.Counter(c.nettool(client_pid, "http", vip["web"], "80", "30"))
    assert set(seen) == set(hostnames), seen

    # 5. The published port answers on every node's underlay address, from outside,
    #    and is balanced over the tasks wherever they run.
    mesh: collections.Counter[str] = collections.Counter()
    for node in c.nodes:
        got = c.lab.exec(c.outside.ns, sys.executable, NETTOOL, "http", str(node.underlay),
                         "8080", "10", timeout=60).stdout.split()
        assert set(got) <= set(hostnames) and got, (node.ns, got)
        mesh.update(got)
    assert set(mesh) == set(hostnames), mesh
    # A host-mode port answers only on the node running the task (echo, on n2).
    said = [c.lab.exec(c.outside.ns, sys.executable, NETTOOL, "say", str(node.underlay),
                       "7001", "hi").stdout.strip() for node in c.nodes]
    assert said == ["ERR ConnectionRefusedError", "hi", "ERR ConnectionRefusedError"], said

    # 6. A long-lived connection (client on n1 -> echo VIP -> echo task on n2) survives
    #    SIGKILL and restart of n1's agent, which then changes nothing.
    held = c.hold(client_pid, vip["echo"], 7000)
    try:
        assert c.exchange(held, "one") == "one"
        before = dump(c.lab, c.nodes[0].ns)
        changes = len(c.log_lines(0, "overlay changed"))
        c.agents[c.names[0]].signal(signal.SIGKILL)
        await c.agents[c.names[0]].wait(10)
        assert c.exchange(held, "two") == "two"  # no agent at all: the kernel carries it

        async def restart() -> None:
            c.start_node_agent(0)
            await eventually(lambda: _logged(c, 0, "dataplane ready", 2), timeout=30,
                             interval=0.2, what="restarted agent's dataplane ready")
        monitor = Monitor(c.nodes[0].ns)
        try:
            _, writes = await monitor.writes_during(restart())
        finally:
            monitor.close()
        # The restarted agent adopted the balancer's table as it was: not one write.
        assert [w for w in writes if " ip shoal " in w] == [], writes
        assert c.exchange(held, "three") == "three"
        assert dump(c.lab, c.nodes[0].ns) == before
        assert len(c.log_lines(0, "overlay changed")) == changes
        # The client still reaches every web task through the VIP after the restart.
        assert set(c.nettool(client_pid, "http", vip["web"], "80", "30")) == set(hostnames)
    finally:
        held.kill()

    # 7. Scale down: the removed task leaves VIP, DNS and mesh.
    await _scale(c, "web", 2)
    await eventually(lambda: _running_count(c, "web", 2), timeout=30, interval=0.2,
                     what="web scaled to 2")
    remaining = {t.status["containerId"][:12] for t in await c.running("web")}

    async def converged() -> bool:
        got = set(c.nettool(client_pid, "http", vip["web"], "80", "20"))
        return got == remaining
    await eventually(converged, timeout=20, interval=0.2, what="VIP without the old task")
    assert sorted(lookup(client_container, "tasks.web")) == sorted(
        c.address(t, "appnet") for t in await c.running("web"))
    for node in c.nodes:
        got = c.lab.exec(c.outside.ns, sys.executable, NETTOOL, "http", str(node.underlay),
                         "8080", "8", timeout=60).stdout.split()
        assert set(got) <= remaining, (node.ns, got)

    # 8. Everything removed: the overlay and the balancer go from every node.
    for name in ("web", "echo", "client"):
        await store.delete(REG.lookup("services"), name, "default")

    async def clean() -> bool:
        tasks = await c.tasks()
        links = c.shoal_links()
        tables = c.nft_tables()
        return not tasks and all(not v for v in links.values()) and all(
            "shoal" not in v for v in tables.values())
    await eventually(clean, timeout=30, interval=0.3, what="no tasks, links or tables")


def swctl(c: NsCluster, *args: str) -> str:
    return Swctl(c.etcd_url, c.prefix, c.workdir)(*args).stdout


def lookup(container: Any, name: str) -> list[str]:
    """Addresses busybox nslookup prints for ``name`` (after the server's own lines)."""
    result = container.exec_run(["nslookup", name])
    text = result.output.decode()
    _, _, answer = text.partition("Name:")
    return [line.split()[-1] for line in answer.splitlines()
            if line.strip().startswith("Address")]


def _logged(c: NsCluster, node: int, event: str, count: int) -> Any:
    async def probe() -> bool:
        return len(c.log_lines(node, event)) >= count
    return probe()


async def _running_count(c: NsCluster, service: str, count: int) -> bool:
    tasks = await c.current(service)
    return len(tasks) == count and all(t.status.get("state") == "running" for t in tasks)


async def _scale(c: NsCluster, service: str, replicas: int) -> None:
    await c.scale(service, replicas)
