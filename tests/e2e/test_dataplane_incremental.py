"""The agent's dataplane applies a change, and only it; its periodic pass repairs drift.

A real ``Dataplane`` programs a lab namespace (real etcd, real nftables, real VXLAN) for
a node ``n1`` whose cluster has ten services with three tasks each on two other nodes.
What the kernel is asked to do is watched from inside the namespace by the kernel's own
notification streams -- ``nft monitor`` for the balancer's table, ``bridge monitor fdb``
and ``ip monitor neigh`` for the overlay's remote endpoints -- so "only its own rules"
is what netlink carried, not what the agent believes it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from shoal.agent.dataplane import Dataplane
from shoal.agent.exec.executor import Observed
from shoal.crds import kinds, resource
from shoal.net import naming
from shoal.store import client, etcd_server
from tests.e2e.netlab import Lab, Node, have_netns_privileges, sh
from tests.helpers import eventually

pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and nft")

REG = kinds.Registry.builtin()
SERVICES = 10
VNI = 4097
VXLAN = naming.vxlan_name(VNI)


def vip(s: int) -> str:
    return f"10.254.0.{10 + s}"


def task_ip(s: int, j: int) -> str:
    return f"10.0.1.{20 + 3 * s + j}"


def network() -> resource.Resource:
    net = resource.new("Network", "appnet", spec={"driver": "overlay"})
    net.status = {"subnet": "10.0.1.0/24", "gateway": "10.0.1.1", "vni": VNI,
                  "vipRange": "10.254.0.0/24",
                  "nodeAddresses": {"n1": "10.0.1.2", "n2": "10.0.1.3", "n3": "10.0.1.4"}}
    return net


def node(i: int) -> resource.Resource:
    n = resource.new("Node", f"n{i}", spec={"availability": "active", "role": "worker"})
    n.status = {"state": "ready", "address": f"198.18.0.{i}"}
    return n


def service(s: int) -> resource.Resource:
    svc = resource.new("Service", f"s{s}", "default",
                       spec={"replicas": 3, "networks": ["appnet"],
                             "template": {"image": "shoal/busybox"}})
    svc.status = {"endpoint": {"mode": "vip", "ports": [],
                               "virtualIPs": [{"network": "appnet", "address": vip(s)}]}}
    return svc


def task(name: str, s: int, node_name: str, ip: str, state: str = "running",
         desired: str = "running") -> resource.Resource:
    t = resource.new("Task", name, "default",
                     spec={"serviceName": f"s{s}", "nodeName": node_name,
                           "desiredState": desired, "slot": 1,
                           "template": {"image": "shoal/busybox"},
                           "networks": [{"name": "appnet", "addresses": [f"{ip}/24"]}]},
                     labels={"shoal.io/service": f"s{s}"})
    t.status = {"state": state}
    return t


async def populate(store: client.Store) -> None:
    await store.create(REG.lookup("networks"), network())
    for i in (1, 2, 3):
        await store.create(REG.lookup("nodes"), node(i))
    for s in range(SERVICES):
        await store.create(REG.lookup("services"), service(s))
        for j in range(3):
            await store.create(REG.lookup("tasks"), task(f"s{s}.{j}", s, f"n{2 + j % 2}",
                                                         task_ip(s, j)))
    # A task of this node, not started yet: it makes n1 host appnet (its VIPs).
    await store.create(REG.lookup("tasks"), task("s0.local", 0, "n1", "10.0.1.200",
                                                 state="starting"))


async def set_task(store: client.Store, name: str, **fields: str) -> None:
    info = REG.lookup("tasks")
    t = await store.get(info, name, "default")
    if "desired" in fields:
        t.spec["desiredState"] = fields["desired"]
    if "state" in fields:
        t.status["state"] = fields["state"]
    await store.update(info, t)


async def until(check: Callable[[], object], timeout: float = 10) -> None:
    """Poll ``check`` (a bool, or asserts) until it holds; on timeout its own assertion
    (or a plain one) says what was last seen."""
    def holds() -> bool:
        try:
            result = check()
        except AssertionError:
            return False
        return result is None or bool(result)

    async def probe() -> bool:
        return holds()
    with contextlib.suppress(AssertionError):
        await eventually(probe, timeout=timeout)
        return
    result = check()
    assert result is None or result, f"not reached within {timeout}s"


async def never_running(_uid: str) -> Observed:
    return Observed("created")


class Monitor:
    """A kernel notification stream (``nft monitor``...) run in the lab namespace, its
    lines collected on a thread. Started before the changes it must see: ``ready``
    makes a harmless change of the watched kind and waits for its line."""

    def __init__(self, lab: Lab, ns: str, *argv: str) -> None:
        self.lab, self.argv = lab, ["ip", "netns", "exec", ns, "stdbuf", "-oL", *argv]
        self.lines: list[str] = []
        self._start()

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.lab.procs.append(self.proc)  # type: ignore[arg-type]
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.strip())

    async def ready(self, probe: list[str], undo: list[str], marker: str) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                # A child forked from this process (gRPC's threads) may die before its
                # exec, seen under load: start it again.
                self._start()
            sh(*probe, check=False)
            return any(marker in line for line in self.lines)
        with contextlib.suppress(AssertionError):
            await until(seen, timeout=20)
        assert any(marker in line for line in self.lines), (
            self.argv, self.proc.poll(), self.lines[-5:])
        count = sum(marker in line for line in self.lines)
        sh(*undo)
        await until(lambda: sum(marker in line for line in self.lines) > count)

    def since(self, mark: int) -> list[str]:
        return self.lines[mark:]


@contextlib.asynccontextmanager
async def running_dataplane(etcd: etcd_server.EtcdServer, prefix: str, lab: Lab,
                            tmp_path: Path, n1: Node | None = None, **kw: Any
                            ) -> AsyncIterator[tuple[client.Store, Dataplane, str]]:
    n1 = n1 or lab.node()
    store = await client.Store.connect(etcd.url, prefix=prefix)
    await populate(store)
    dp = Dataplane(store, "n1", str(n1.underlay), observe=never_running, backend="nftables",
                   netns=n1.ns, state_dir=tmp_path, dns_port=5353, **kw)
    try:
        await dp.start()
        yield store, dp, n1.ns
    finally:
        await dp.close()
        await store.close()


def nft_elements(lab: Lab, ns: str) -> str:
    return lab.exec(ns, "nft", "list", "map", "ip", "shoal", "va_tcp").stdout


def fdb(ns: str) -> str:
    return sh("bridge", "-n", ns, "fdb", "show", "dev", VXLAN).stdout


async def test_a_task_change_touches_only_its_own_rules(
        etcd: etcd_server.EtcdServer, prefix: str, lab: Lab, tmp_path: Path) -> None:
    # The monitors are started before this process talks to etcd: a child forked once
    # gRPC's threads run was seen to hang before its exec.
    n1 = lab.node()
    nft = Monitor(lab, n1.ns, "nft", "monitor")
    bridge = Monitor(lab, n1.ns, "bridge", "monitor", "fdb")
    neigh = Monitor(lab, n1.ns, "ip", "monitor", "neigh")
    async with running_dataplane(etcd, prefix, lab, tmp_path, n1,
                                 resync_every=3600) as (store, dp, ns):
        await until(lambda: all(vip(s) in nft_elements(lab, ns)
                                     for s in range(SERVICES)), timeout=20)
        await nft.ready(["ip", "netns", "exec", ns, "nft", "add", "table", "ip", "probe"],
                        ["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "probe"],
                        "probe")
        await bridge.ready(["bridge", "-n", ns, "fdb", "append", "02:00:00:00:00:01", "dev",
                            VXLAN, "dst", "198.18.0.99"],
                           ["bridge", "-n", ns, "fdb", "del", "02:00:00:00:00:01", "dev",
                            VXLAN, "dst", "198.18.0.99"], "02:00:00:00:00:01")
        await neigh.ready(["ip", "-n", ns, "neigh", "replace", "10.0.1.250", "lladdr",
                           "02:00:00:00:00:02", "dev", VXLAN, "nud", "permanent"],
                          ["ip", "-n", ns, "neigh", "del", "10.0.1.250", "dev", VXLAN],
                          "10.0.1.250")
        marks = (len(nft.lines), len(bridge.lines), len(neigh.lines))
        passes = dp.passes

        # 1. A task of s3 stops serving: s3's VIP loses that backend.
        await set_task(store, "s3.1", desired="shutdown")
        gone = task_ip(3, 1)

        def backend_left() -> None:
            assert vip(3) in nft_elements(lab, ns)
            assert gone not in nft_elements(lab, ns)
        await until(backend_left, timeout=10)
        # 2. ... and ends: its address is no longer a remote endpoint.
        await set_task(store, "s3.1", state="shutdown")
        gone_mac = naming.mac_for(gone)
        await until(lambda: gone_mac not in fdb(ns), timeout=10)
        # 3. A new task of s5 starts on n3: s5's VIP gains it, and its endpoint appears.
        new_ip = "10.0.1.150"
        await store.create(REG.lookup("tasks"), task("s5.new", 5, "n3", new_ip))
        await until(lambda: new_ip in nft_elements(lab, ns)
                         and naming.mac_for(new_ip) in fdb(ns), timeout=10)
        await until(lambda: any(new_ip in line for line in neigh.since(marks[2])),
                         timeout=5)

        # What the kernel was told: elements of s3's and s5's VIPs only, no table or
        # chain rewritten; FDB and neighbour entries of the two tasks' addresses only.
        elements = [line for line in nft.since(marks[0]) if "element" in line]
        assert elements, nft.since(marks[0])
        assert all(vip(3) in line or vip(5) in line for line in elements), elements
        assert any(vip(3) in line for line in elements)
        assert any(vip(5) in line for line in elements)
        # Besides elements, at most a shared chain for a backend count not seen before
        # (``va_tcp_2``: one chain per protocol and count, for every service).
        others = [line for line in nft.since(marks[0])
                  if "element" not in line and line and not line.startswith("#")]
        assert all(re.match(r"add (chain|rule) ip shoal va_(tcp|udp)_\d+( |$)", line)
                   for line in others), others
        fdb_lines = [line for line in bridge.since(marks[1]) if line]
        assert fdb_lines and all(gone_mac in line or naming.mac_for(new_ip) in line
                                 for line in fdb_lines), fdb_lines
        # (``ip monitor neigh`` shows the FDB's bridge-family entries too, by MAC.)
        neigh_lines = [line for line in neigh.since(marks[2]) if line]
        ours = (f"{gone} ", f"{new_ip} ", gone_mac, naming.mac_for(new_ip))
        assert neigh_lines and all(any(x in line for x in ours)
                                   for line in neigh_lines), neigh_lines
        # DNS answers follow the same changes.
        answer = dp.dns.table.resolve("appnet", "tasks.s5")
        assert ipaddress.IPv4Address(new_ip) in answer.addresses
        assert ipaddress.IPv4Address(gone) not in dp.dns.table.resolve(
            "appnet", "tasks.s3").addresses
        assert dp.passes > passes  # incremental passes ran


async def test_the_periodic_pass_repairs_drift_and_says_what(
        etcd: etcd_server.EtcdServer, prefix: str, lab: Lab, tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        # A budget of a whole CPU: the periodic pass every second whatever it costs
        # (the test is about what a pass repairs, not how it is paced).
        async with running_dataplane(etcd, prefix, lab, tmp_path, resync_every=1.0,
                                     resync_budget=1.0) as (_store, dp, ns):
            await until(lambda: vip(4) in nft_elements(lab, ns), timeout=20)
            # Someone deletes a remote endpoint's FDB entry and a balancer element.
            victim = task_ip(4, 0)
            mac = naming.mac_for(victim)
            sh("bridge", "-n", ns, "fdb", "del", mac, "dev", VXLAN, "dst", "198.18.0.2")
            element = next(line for line in nft_elements(lab, ns).splitlines()
                           if vip(4) in line and victim in line)
            key = element.strip().rstrip(",").split(":")[0].strip()
            lab.exec(ns, "nft", "delete", "element", "ip", "shoal", "va_tcp",
                     f"{{ {key} }}")
            assert mac not in fdb(ns) and victim not in nft_elements(lab, ns)

            def repaired() -> None:
                assert f"{mac} dst 198.18.0.2" in fdb(ns)
                assert victim in nft_elements(lab, ns)
            await until(repaired, timeout=15)
            drift = [e for e in logs if e["event"] == "dataplane drift repaired"]
            assert any(f"fdb add {mac} dst 198.18.0.2 on vni {VNI}" in e["repaired"]
                       and "network/appnet" in e["keys"] for e in drift), drift
            # Drift found: the next check is due at the floor interval, and says so.
            await until(lambda: any(e["event"] == "next periodic dataplane pass"
                                    and e["why"] == "drift" and e["after"] == 1.0
                                    for e in logs), timeout=5)

            # A planned state gone wrong (a bug) is found, reported and replaced.
            wrong = next(k for k in dp.index.applied_services if str(k[0]) == vip(7))
            del dp.index.applied_services[wrong]

            def reported() -> None:
                errors = [e for e in logs if e["event"].startswith(
                    "incremental dataplane plan differed")]
                assert errors and any(vip(7) in d for d in errors[-1]["differences"])
                assert wrong in dp.index.applied_services
            await until(reported, timeout=15)
            await asyncio.sleep(0)
