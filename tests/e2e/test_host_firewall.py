"""Shoal's dataplane on hosts whose firewall Docker manages, and the mesh on localhost.

The nodes are lab namespaces (``nscluster``) with real docker agents and containers. The
first test makes each node's namespace look like a default Docker install before any
agent starts -- iptables-nft with FORWARD policy DROP and Docker's ``DOCKER-USER`` /
``DOCKER-FORWARD`` jumps, a leftover iptables-legacy FORWARD DROP as well,
``bridge-nf-call-iptables=1`` (br_netfilter is per namespace on this kernel) and an
unrelated rule of the user's -- then checks what a Swarm user would: tasks on different
nodes reach each other over the overlay by address, by VIP and by DNS name; the published
port answers through the mesh on every node from outside and from 127.0.0.1 on a node;
the Node reports ``Firewall`` True; rules deleted behind the agent's back come back; and
once the services are gone the firewall is exactly what the user had (``iptables-save``
of both implementations and ``nft list ruleset`` compared). The firewall lives in the
lab's namespaces, which the ``lab`` fixture deletes even on failure: the machine's own
firewall is never touched (asserted).

The second test: the default setup (no firewall), one node -- a published port answers
on 127.0.0.1 and on the node's own address from the node itself.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal.crds import conditions, kinds
from shoal.net import hostfw
from shoal.store import etcd_server
from tests.e2e.netcluster import NETTOOL
from tests.e2e.netlab import Lab, have_netns_privileges, sh
from tests.e2e.nscluster import NsCluster, remove_containers
from tests.e2e.test_networking_cluster import HTTPD, apply, lookup, pinned, service
from tests.helpers import eventually

# alone: the first test compares the machine's own iptables and bridge-nf-call-iptables
# before and after; dockerd changes the host's rules for other tests' containers, so
# nothing may run beside it.
pytestmark = [pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2"),
              pytest.mark.alone]

REG = kinds.Registry.builtin()
BR_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"

# What `dockerd` (iptables-nft) leaves in the filter table, plus a rule of the user's.
DOCKER_NFT = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:DOCKER-FORWARD - [0:0]
-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER-USER -s 192.0.2.0/24 -j DROP
-A DOCKER-USER -j RETURN
COMMIT
"""
# An older Docker's legacy rules still loaded next to them.
DOCKER_LEGACY = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
COMMIT
"""


def firewall(ns: str) -> str:
    """Everything a user would compare, without counters and timestamps."""
    out = []
    for argv in (["iptables-nft-save"], ["iptables-legacy-save"], ["nft", "list", "ruleset"]):
        text = sh("ip", "netns", "exec", ns, *argv).stdout
        out += [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                if not line.startswith("#") and "packets" not in line]
    return "\n".join(out)


def make_docker_host(ns: str) -> None:
    sh("ip", "netns", "exec", ns, "iptables-nft-restore", input=DOCKER_NFT)
    sh("ip", "netns", "exec", ns, "iptables-legacy-restore", input=DOCKER_LEGACY)
    sh("ip", "netns", "exec", ns, "sh", "-c", f"echo 1 > {BR_NF}")


async def test_docker_managed_firewall(etcd: etcd_server.EtcdServer, prefix: str,
                                       tmp_path: Path, lab: Lab, docker_client: Any) -> None:
    host_before = (sh("iptables-nft-save").stdout, sh("cat", BR_NF).stdout)
    names: list[str] = []
    try:
        async with NsCluster.open_ns(etcd.url, prefix, tmp_path, lab, size=2) as c:
            names = c.names
            await docker_scenario(c, docker_client)
    finally:
        remove_containers(docker_client, names)
    # The lab's namespaces held the whole Docker-like firewall: the host's is untouched.
    host_after = (sh("iptables-nft-save").stdout, sh("cat", BR_NF).stdout)
    strip = re.compile(r"^#.*$", re.M)
    assert strip.sub("", host_after[0]) == strip.sub("", host_before[0])
    assert host_after[1] == host_before[1]


async def docker_scenario(c: NsCluster, docker: Any) -> None:
    for node in c.nodes:
        make_docker_host(node.ns)
    before = {n.ns: firewall(n.ns) for n in c.nodes}
    assert all(":FORWARD DROP" in text for text in before.values())

    c.start_manager()
    for i in range(len(c.nodes)):
        c.start_node_agent(i)
    await c.wait_ready(c.names, timeout=30)
    await apply(c.store, {"apiVersion": "shoal.io/v1", "kind": "Network",
                          "metadata": {"name": "appnet"}, "spec": {}})
    await apply(c.store, service("web", HTTPD, 2, placement={"maxReplicasPerNode": 1},
                                 endpoint={"ports": [{"target": 80, "published": 8080}]}))
    await apply(c.store, service("client", ["sleep", "3600"], **pinned("n1")))

    async def running() -> bool:
        return len(await c.running("web")) == 2 and len(await c.running("client")) == 1
    await eventually(running, timeout=90, interval=0.3, what="web 2/2 and client 1/1")

    # The Node says the firewall lets Shoal's traffic through.
    for name in c.names:
        cond = conditions.get_condition(await c.node(name), "Firewall")
        assert cond is not None and cond["status"] == "True", (name, cond)
    # Our rules sit in DOCKER-USER (nft and legacy), above Docker's RETURN.
    saved = sh("ip", "netns", "exec", c.nodes[0].ns, "iptables-nft-save", "-t", "filter").stdout
    assert "-A DOCKER-USER -i shb-+ -m comment --comment shoal -j ACCEPT" in saved
    assert saved.index("--comment shoal -j ACCEPT") < saved.index("-A DOCKER-USER -j RETURN")
    legacy = sh("ip", "netns", "exec", c.nodes[0].ns, "iptables-legacy-save").stdout
    assert "-A DOCKER-USER -o shb-+ -m comment --comment shoal -j ACCEPT" in legacy

    web = await c.running("web")
    assert {t.spec["nodeName"] for t in web} == set(c.names)
    ids = {t.status["containerId"][:12] for t in web}
    (client_task,) = await c.running("client")
    client_pid = docker.containers.get(client_task.status["containerId"]).attrs["State"]["Pid"]
    client = docker.containers.get(client_task.status["containerId"])
    svc = await c.store.get(REG.lookup("services"), "web", "default")
    vip = svc.status["endpoint"]["virtualIPs"][0]["address"]

    # Overlay across nodes, by task address (n1 -> n1 and n1 -> n2).
    for task in web:
        got = c.nettool(client_pid, "http", c.address(task, "appnet"), "80", "1")
        assert got == [task.status["containerId"][:12]], (task.spec["nodeName"], got)
    # By VIP: both tasks answer, one of them on the other node (once this node's
    # balancer has seen the other task running: agents learn it from etcd, too).
    async def spread(host: str) -> bool:
        return set(c.nettool(client_pid, "http", host, "80", "20")) == ids
    await eventually(lambda: spread(vip), timeout=20, interval=0.3, what="VIP spread")
    # By DNS name, from inside the container (its resolv.conf names the node's responder).
    # (busybox's static wget cannot resolve names itself: the resolver is asked with
    # nslookup, through the container's resolv.conf, and its answers are connected to.)
    (by_name,) = lookup(client, "web")
    assert by_name == vip
    await eventually(lambda: spread(by_name), timeout=20, interval=0.3, what="by name")
    by_task = lookup(client, "tasks.web")
    assert sorted(by_task) == sorted(c.address(t, "appnet") for t in web)
    assert {c.nettool(client_pid, "http", a, "80", "1")[0] for a in by_task} == ids

    # The mesh: every node's address answers from outside, both tasks behind it.
    for node in c.nodes:
        async def mesh(address: str = str(node.underlay)) -> bool:
            got = c.lab.exec(c.outside.ns, sys.executable, NETTOOL, "http", address,
                             "8080", "10", timeout=60).stdout.split()
            assert got and set(got) <= ids, (address, got)
            return set(got) == ids
        await eventually(mesh, timeout=20, interval=0.3, what=f"mesh on {node.underlay}")
    # ... and 127.0.0.1 on a node (`curl http://localhost:8080` there).
    got = c.lab.exec(c.nodes[0].ns, sys.executable, NETTOOL, "http", "127.0.0.1", "8080",
                     "10", timeout=60).stdout.split()
    assert got and set(got) <= ids, got

    # Docker restarted (or an admin) removes our rules: the agent puts them back.
    ns = c.nodes[1].ns
    ours = [line for line in sh("ip", "netns", "exec", ns, "iptables-nft-save", "-t",
                                "filter").stdout.splitlines() if "--comment shoal" in line]
    assert ours
    for line in ours:
        sh("ip", "netns", "exec", ns, "iptables-nft", *line.replace("-A ", "-D ", 1).split())
    await c.scale("web", 3)  # any change makes a dataplane pass

    async def restored() -> bool:
        text = sh("ip", "netns", "exec", ns, "iptables-nft-save", "-t", "filter").stdout
        return all(line in text for line in ours)
    await eventually(restored, timeout=30, interval=0.3, what="shoal's rules re-added")

    # Everything removed: the user's firewall is exactly as it was.
    for name in ("web", "client"):
        await c.store.delete(REG.lookup("services"), name, "default")

    async def as_before() -> bool:
        return not await c.tasks() and all(firewall(n.ns) == before[n.ns] for n in c.nodes)
    await eventually(as_before, timeout=60, interval=0.5, what="firewall as before")


async def test_published_port_answers_on_localhost(etcd: etcd_server.EtcdServer, prefix: str,
                                                   tmp_path: Path, lab: Lab,
                                                   docker_client: Any) -> None:
    names: list[str] = []
    try:
        async with NsCluster.open_ns(etcd.url, prefix, tmp_path, lab, size=1) as c:
            names = c.names
            c.start_manager()
            c.start_node_agent(0)
            await c.wait_ready(c.names, timeout=30)
            await apply(c.store, {"apiVersion": "shoal.io/v1", "kind": "Network",
                                  "metadata": {"name": "appnet"}, "spec": {}})
            await apply(c.store, service(
                "web", HTTPD, 1, endpoint={"ports": [{"target": 80, "published": 8080}]}))

            async def up() -> bool:
                return len(await c.running("web")) == 1
            await eventually(up, timeout=60, interval=0.3, what="web 1/1")
            (task,) = await c.running("web")
            node = c.nodes[0]
            for host in ("127.0.0.1", str(node.underlay)):  # `nc 127.0.0.1 8080` on the node
                got = c.lab.exec(node.ns, sys.executable, NETTOOL, "http", host, "8080", "3",
                                 timeout=60).stdout.split()
                assert got == [task.status["containerId"][:12]] * 3, (host, got)
    finally:
        remove_containers(docker_client, names)


NATIVE = """table inet filter {
  chain input { type filter hook input priority 0; policy accept; }
  chain forward { type filter hook forward priority 0; policy drop; ct state established accept; }
}
"""


async def test_rules_added_and_removed_exactly(lab: Lab, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """The building block alone, on a namespace holding all three kinds of firewall
    (Docker's iptables-nft, legacy, and a native nftables forward chain with policy
    drop): ``ensure`` adds ours to each, twice changes nothing, ``remove`` (what the
    agent does when the node hosts nothing, and ``swctl down`` for a local node) leaves
    exactly the user's rules; a table Shoal cannot write is reported, not ignored."""
    ns = lab.ns("fw")
    make_docker_host(ns)
    sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=NATIVE)
    before = firewall(ns)
    fw = hostfw.HostFirewall(ns, "198.18.0.9")
    report = await fw.ensure()
    assert not report.problems and len(report.changes) == 5 + 5 + 2, report
    native = sh("ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "filter",
                "forward").stdout
    assert 'iifname "shb-*" accept comment "shoal"' in native
    assert (await fw.ensure()).changes == []
    removed = await fw.remove()
    assert len(removed.changes) == 12 and firewall(ns) == before

    # iptables-legacy's tools missing while its filter table exists: a problem, reported.
    real = hostfw.shutil.which
    monkeypatch.setattr(hostfw.shutil, "which",
                        lambda name: None if "legacy" in name else real(name))
    report = await fw.ensure()
    assert report.problems == ["an iptables-legacy filter table exists but "
                               "iptables-legacy-save/-restore are not installed"]
    await fw.remove()
