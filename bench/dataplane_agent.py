"""The agent's dataplane at cluster scale: one task change, from etcd to the kernel and DNS.

    python -m bench.dataplane --agent-only [--services 10000] [--endpoints 10]
        [--agent-changes 40] [--agent-baseline-changes 5]
    python -m bench.dataplane_agent [--services 10000] [--endpoints 10] [--changes 40]
        [--baseline-changes 5]

A real etcd holds S services x E tasks on one overlay network ``appnet`` spread over 50
nodes, plus S/10 services x E tasks on a network ``backnet`` this node does not host,
written straight into the store (no controllers; projections as the store writes them).
One real ``Dataplane`` (nftables backend) runs as its own process, programming a lab
namespace; once it is ready, N single task changes are made, alternately a serving task
desired shut down and a new running task of another service, and for each the time
from the etcd write until

* the balancer reflects it: the kernel's notifications of the committed change to both
  of the service's VirtualServices (tcp and udp), read by ``nft monitor`` in the
  namespace (after the changes, ``nft get element`` checks the touched services'
  backend slots hold exactly the expected addresses), and
* DNS answers with it: ``tasks.<service>`` asked of the node's responder inside the
  namespace returns exactly the expected addresses,

as p50/p99 (target p99 <= 100 ms); the agent process's CPU time per change, its resident
memory, the start-up pass and one periodic pass (full plan, comparison, thorough
overlay sync, balancer repair) with the interval the agent's pacing sets after it
(``agent/resyncpace.py``). The same changes then run against a Dataplane forced
to the full-plan path (``incremental=False``) as the baseline. Last, what the node holds:
VirtualServices programmed, DNS records, FDB entries per network.

Needs root and nftables; everything lives in namespaces and a temporary etcd this
benchmark creates and removes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ipaddress
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.message
import dns.rdatatype
from pyroute2.netns import create_socket

from bench import common
from bench.common import load_average
from shoal.crds import kinds, resource
from shoal.net import naming
from shoal.net.nft import NftRunner
from shoal.store import client, etcd_server
from tests.e2e.netlab import Lab, sh

if TYPE_CHECKING:  # imported where used: the parent process never loads the agent
    from shoal.agent.dataplane import Dataplane

REG = kinds.Registry.builtin()
TASKS, NODES, SERVICES, NETWORKS = (REG.lookup(k) for k in
                                    ("tasks", "nodes", "services", "networks"))
REMOTE_NODES = 49
LOCAL = "n0"
APP_VNI, BACK_VNI = 4097, 4098
APP_BASE = ipaddress.IPv4Address("10.17.0.0")  # task addresses on appnet
BACK_BASE = ipaddress.IPv4Address("10.25.0.0")
DNS_PORT = 5353
TICK = os.sysconf("SC_CLK_TCK")


def vip(s: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address("10.20.0.0") + 10 + s


def node_address(i: int) -> str:
    return str(ipaddress.IPv4Address("10.16.0.2") + i)


# --- objects -------------------------------------------------------------------------------

def network(name: str, subnet: str, vni: int, vips: str, nodes: int) -> resource.Resource:
    base = ipaddress.IPv4Network(subnet).network_address
    net = resource.new("Network", name, spec={"driver": "overlay"})
    net.status = {"subnet": subnet, "gateway": str(base + 1), "vni": vni, "vipRange": vips,
                  "nodeAddresses": {("n0" if i == 0 else f"r{i}"): str(base + 2 + i)
                                    for i in range(nodes)}}
    return net


def node(name: str, address: str) -> resource.Resource:
    n = resource.new("Node", name, spec={"availability": "active", "role": "worker"})
    n.status = {"state": "ready", "address": address}
    return n


def service(name: str, net: str, address: ipaddress.IPv4Address) -> resource.Resource:
    svc = resource.new("Service", name, "default",
                       spec={"replicas": 10, "networks": [net],
                             "template": {"image": "shoal/busybox"}})
    svc.status = {"endpoint": {"mode": "vip", "ports": [],
                               "virtualIPs": [{"network": net, "address": str(address)}]}}
    return svc


def task(name: str, svc: str, node_name: str, net: str, ip: ipaddress.IPv4Address,
         prefix: int, state: str = "running") -> resource.Resource:
    t = resource.new("Task", name, "default",
                     spec={"serviceName": svc, "nodeName": node_name, "slot": 1,
                           "desiredState": "running", "serviceGeneration": 1,
                           "template": {"image": "shoal/busybox"},
                           "networks": [{"name": net, "addresses": [f"{ip}/{prefix}"]}]},
                     labels={"shoal.io/service": svc})
    t.status = {"state": state}
    return t


class Cluster:
    """What the benchmark wrote, so it knows each change's expected outcome."""

    def __init__(self, services: int, endpoints: int) -> None:
        self.services, self.endpoints = services, endpoints
        self.members: dict[int, dict[str, ipaddress.IPv4Address]] = {}  # s -> task -> ip
        self.next_ip = services * endpoints + 1000

    def objects(self) -> list[tuple[kinds.KindInfo, resource.Resource]]:
        out: list[tuple[kinds.KindInfo, resource.Resource]] = [
            (NETWORKS, network("appnet", "10.16.0.0/14", APP_VNI, "10.20.0.0/16",
                               REMOTE_NODES + 1)),
            (NETWORKS, network("backnet", "10.24.0.0/16", BACK_VNI, "10.26.0.0/16",
                               REMOTE_NODES + 1)),
            *((NODES, node(f"r{i}", f"198.18.1.{i}")) for i in range(1, REMOTE_NODES + 1))]
        for s in range(self.services):
            out.append((SERVICES, service(f"s{s}", "appnet", vip(s))))
            self.members[s] = {}
            for j in range(self.endpoints):
                ip = APP_BASE + s * self.endpoints + j
                name = f"s{s}.{j}"
                self.members[s][name] = ip
                out.append((TASKS, task(name, f"s{s}", f"r{1 + (s + j) % REMOTE_NODES}",
                                        "appnet", ip, 14)))
        for b in range(self.services // 10):
            out.append((SERVICES, service(f"b{b}", "backnet",
                                          ipaddress.IPv4Address("10.26.0.10") + b)))
            for j in range(self.endpoints):
                out.append((TASKS, task(f"b{b}.{j}", f"b{b}", f"r{1 + j % REMOTE_NODES}",
                                        "backnet", BACK_BASE + b * self.endpoints + j, 16)))
        # A task of this node, not started: it makes the node host appnet (not backnet).
        out.append((TASKS, task("s0.local", "s0", LOCAL, "appnet",
                                ipaddress.IPv4Address("10.16.255.200"), 14,
                                state="starting")))
        return out


async def populate(store: client.Store, objs: list[tuple[kinds.KindInfo, resource.Resource]]
                   ) -> None:
    await common.commit_all(store, [client.Op("create", info, obj) for info, obj in objs])


# --- the agent process ---------------------------------------------------------------------

async def serve(url: str, prefix: str, ns: str, underlay: str, incremental: bool) -> None:
    """The dataplane under test, alone in its process; commands on stdin."""
    from shoal.agent.dataplane import Dataplane
    from shoal.agent.exec.executor import Observed
    from shoal.runtime import logging as rt_logging

    rt_logging.configure(level="warning")

    async def observe(_uid: str) -> Observed:
        return Observed("created")
    store = await client.Store.connect(url, prefix=prefix)
    dp = Dataplane(store, LOCAL, underlay, observe=observe, backend="nftables", netns=ns,
                   state_dir=tempfile.mkdtemp(), dns_port=DNS_PORT, resync_every=1e9,
                   incremental=incremental)
    t0 = time.monotonic()
    await dp.start()
    profile = None
    if os.environ.get("BENCH_PROFILE"):  # where to write a cProfile of the changes
        profile = cProfile.Profile()
        profile.enable()
    print(f"ready {time.monotonic() - t0:.3f}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "periodic" and profile is not None:
            profile.disable()
            profile.dump_stats(os.environ["BENCH_PROFILE"] + ("-inc" if incremental
                                                              else "-full"))
            profile = cProfile.Profile()
            profile.enable()
            print(f"periodic {await periodic(dp)}", flush=True)
            profile.disable()
            profile.dump_stats(os.environ["BENCH_PROFILE"] + "-periodic")
            profile = None
        elif line == "periodic":
            print(f"periodic {await periodic(dp)}", flush=True)
        elif line == "stats":
            assert dp.lb is not None
            print("stats " + json.dumps({
                "virtual_services": len(dp.lb.services),
                "dns_records": len(dp.dns.table._records),
                "index_tasks": len(dp.index.tasks)}), flush=True)
    await dp.close()
    await store.close()


async def periodic(dp: Dataplane) -> str:
    """One periodic pass: its wall and CPU seconds, and the interval the agent's default
    pacing (30 s floor, 3 % of a CPU) would set after it."""
    from shoal.agent import dataplane, resyncpace

    t0, c0 = time.monotonic(), time.process_time()
    await dp.sync("periodic")
    cost = resyncpace.Cost(wall=time.monotonic() - t0, cpu=time.process_time() - c0)
    paced = resyncpace.ResyncPacer(dataplane.RESYNC_EVERY, 0).choose(cost)
    return json.dumps({"wall": cost.wall, "cpu": cost.cpu, "every": paced.seconds})


async def informers_only(url: str, prefix: str) -> None:
    """The dataplane's four informers synced and nothing else: its memory is the part
    of the agent's that is the caches."""
    from shoal.agent import netplan
    from shoal.runtime import informer
    from shoal.store import projections

    store = await client.Store.connect(url, prefix=prefix)
    full = informer.SharedInformerFactory(store)
    projected = informer.SharedInformerFactory(store.view(projections.DATAPLANE_DIR))
    # As the Dataplane keeps them: tasks as their plan entries, not as objects.
    tasks = informer.KeptInformer(projected.store, TASKS, netplan.task_entry)
    for info in (NETWORKS, NODES):
        full.informer(info)
    projected.informer(SERVICES)
    full.start()
    projected.start()
    tasks.start()
    await full.wait_for_sync()
    await projected.wait_for_sync()
    await tasks.wait_synced()
    print(f"\n{rss_mb(os.getpid())}", flush=True)
    await full.stop()
    await projected.stop()
    await tasks.stop()
    await store.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Agent:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, prefix: str, ns: str, underlay: str,
                    incremental: bool) -> tuple[Agent, float]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.dataplane_agent", "--serve", url, prefix, ns,
            underlay, "incremental" if incremental else "full",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        agent = cls(proc)
        word, value = await agent.read()
        assert word == "ready", (word, value)
        return agent, float(value)

    async def read(self) -> tuple[str, str]:
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode().strip()
        if not line:
            raise RuntimeError("the agent process ended")
        word, _, value = line.partition(" ")
        return word, value

    async def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        return (await self.read())[1]

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 30)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# --- observing the kernel and DNS ----------------------------------------------------------

class Observer:
    """Sees the kernel's balancer change through ``nft monitor`` in the namespace (the
    kernel's own notifications, sent once a transaction has committed: polling ``nft get
    element`` instead made libnftables load the 100,000-element map each time and took
    more CPU than the agent), and asks the node's DNS responder."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.lines: list[tuple[float, str]] = []
        self.monitor = self._spawn()
        self.nft = NftRunner(ns, "lib")
        self.sock = create_socket(f"/var/run/netns/{ns}", socket.AF_INET, socket.SOCK_DGRAM,
                                  flags=0)
        self.sock.settimeout(0.2)

    def _spawn(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "stdbuf", "-oL", "nft", "monitor"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        return proc

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line))

    async def ready(self) -> None:
        """Wait (at most 30 s) for the monitor to report a probe table, created and
        removed each try; say so and go on if it does not: at 10,000 services no probe
        was reported in three tries of 45 s, while the changes themselves were (run 1 in
        bench/RESULTS.md), which is not understood yet."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.nft.run_sync("add table ip benchprobe\ndelete table ip benchprobe\n")
            if any("benchprobe" in line for _, line in self.lines):
                return
            await asyncio.sleep(0.2)
        print("  (nft monitor reported no probe table within 30 s; timing anyway)",
              flush=True)

    def balanced(self, s: int, since: int) -> float | None:
        """When the kernel reported both of ``vip(s)``'s VirtualServices (tcp, udp)
        changed, among the lines from ``since`` on; None while it has not."""
        done: dict[str, float] = {}
        text = f"{vip(s)} "
        for at, line in self.lines[since:]:
            if text in line:
                for proto in ("tcp", "udp"):
                    if proto in line and proto not in done:
                        done[proto] = at
        return max(done.values()) if len(done) == 2 else None

    def balancer(self, s: int) -> set[ipaddress.IPv4Address]:
        """The backends the kernel balances ``vip(s)`` (tcp) over (a check, not timed)."""
        head = self.nft.run_sync(f"get element ip shoal svca {{ {vip(s)} . tcp }}")
        m = re.search(r"goto va_tcp_(\d+)", head)
        if m is None:
            return set()
        keys = ", ".join(f"{vip(s)} . {i}" for i in range(int(m.group(1))))
        slots = self.nft.run_sync(f"get element ip shoal va_tcp {{ {keys} }}")
        return {ipaddress.IPv4Address(a) for a in ADDR.findall(slots)}

    def dns(self, s: int) -> set[ipaddress.IPv4Address] | None:
        query = dns.message.make_query(f"tasks.s{s}", dns.rdatatype.A)
        try:
            self.sock.sendto(query.to_wire(), (node_address(0), DNS_PORT))
            wire = self.sock.recv(65535)
        except OSError:
            return None
        reply = dns.message.from_wire(wire)
        return {ipaddress.IPv4Address(r.address) for rrset in reply.answer for r in rrset}

    def close(self) -> None:
        self.monitor.kill()
        self.monitor.wait()
        self.sock.close()
        self.nft.close()


ADDR = re.compile(r":\s*(\d+\.\d+\.\d+\.\d+)")


async def one_change(store: client.Store, cluster: Cluster, obs: Observer, i: int,
                     rng: random.Random) -> tuple[float, float, int]:
    """Change one task; seconds until the balancer, and until DNS, show it."""
    s = rng.randrange(cluster.services)
    members = cluster.members[s]
    since = len(obs.lines)
    if i % 2 == 0 and len(members) > 1:
        name = rng.choice(sorted(members))
        live = await store.get(TASKS, name, "default")
        live.spec["desiredState"] = "shutdown"
        members.pop(name)
        t0 = time.monotonic()
        await store.update(TASKS, live)
    else:
        ip = APP_BASE + cluster.next_ip
        cluster.next_ip += 1
        name = f"s{s}.new{i}"
        members[name] = ip
        obj = task(name, f"s{s}", f"r{1 + i % REMOTE_NODES}", "appnet", ip, 14)
        t0 = time.monotonic()
        await store.create(TASKS, obj)
    want = set(members.values())
    lb_at = dns_at = None
    deadline = t0 + 60
    while (lb_at is None or dns_at is None) and time.monotonic() < deadline:
        if lb_at is None:
            at = obs.balanced(s, since)
            if at is not None:
                lb_at = at - t0
        # DNS is updated after the balancer in the same pass: asking the agent's
        # responder before would only take its CPU.
        if dns_at is None and lb_at is not None and obs.dns(s) == want:
            dns_at = time.monotonic() - t0
        # The responder is the agent's: ask it a few hundred times a second at most.
        await asyncio.sleep(0.002)
    if lb_at is None or dns_at is None:
        raise RuntimeError(f"change {i} (service s{s}) not reflected within 60 s")
    return lb_at, dns_at, s


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(url: str, prefix: str, lab_ns: str, underlay: str, store: client.Store,
                  cluster: Cluster, changes: int, incremental: bool, rng: random.Random
                  ) -> dict[str, Any]:
    agent, start = await Agent.start(url, prefix, lab_ns, underlay, incremental)
    obs = Observer(lab_ns)
    try:
        await obs.ready()
        rss_ready = agent.rss_mb()
        # Let the start-up settle (informer bursts) before timing changes.
        await asyncio.sleep(2)
        lb_times: list[float] = []
        dns_times: list[float] = []
        cpu0 = agent.cpu()
        touched: set[int] = set()
        for i in range(changes):
            lb_at, dns_at, s = await one_change(store, cluster, obs, i, rng)
            lb_times.append(lb_at)
            dns_times.append(dns_at)
            touched.add(s)
        cpu = (agent.cpu() - cpu0) / changes
        # Not timed: the kernel holds exactly what the changes left.
        for s in touched:
            want = set(cluster.members[s].values())
            if obs.balancer(s) != want:
                raise RuntimeError(f"the kernel balances {vip(s)} over "
                                   f"{sorted(map(str, obs.balancer(s)))}, not "
                                   f"{sorted(map(str, want))}")
        periodic = json.loads(await agent.ask("periodic"))
        stats = json.loads(await agent.ask("stats"))
        return {"start": start, "lb": lb_times, "dns": dns_times, "cpu": cpu,
                "rss": max(rss_ready, agent.rss_mb()), "periodic": periodic,
                "stats": stats}
    finally:
        obs.close()
        await agent.stop()


def fdb_entries(ns: str, vni: int) -> int:
    out = sh("bridge", "-n", ns, "fdb", "show", "dev", naming.vxlan_name(vni),
             check=False).stdout
    return sum(1 for line in out.splitlines() if " dst " in line)


async def run(services: int, endpoints: int, changes: int, baseline_changes: int) -> None:
    rng = random.Random(18)
    print(f"agent dataplane: {services} services x {endpoints} tasks on a hosted network, "
          f"{services // 10} x {endpoints} on one it does not host, {REMOTE_NODES + 1} "
          f"nodes; {os.cpu_count()} CPUs, load average {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = etcd_server.EtcdServer(Path(tmp) / "etcd")
        server.start()
        lab = Lab()
        try:
            n = lab.node()
            store = await client.Store.connect(server.url, "/bench")
            cluster = Cluster(services, endpoints)
            t0 = time.monotonic()
            objs = cluster.objects()
            objs.append((NODES, node(LOCAL, str(n.underlay))))
            await populate(store, objs)
            print(f"  etcd: {len(objs)} objects written in {time.monotonic() - t0:.0f} s",
                  flush=True)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.dataplane_agent", "--informers", server.url,
                "/bench", stdout=asyncio.subprocess.PIPE)
            # The last line: the runtime may log (a long GC pause) before it.
            caches_mb = float((await proc.communicate())[0].decode().split()[-1])
            print(f"  the dataplane's informers alone, synced: {caches_mb:.0f} MB resident",
                  flush=True)
            results = {}
            for label, incremental, count in (("incremental", True, changes),
                                              ("full plan (baseline)", False,
                                               baseline_changes)):
                if count <= 0:
                    continue
                r = await measure(server.url, "/bench", n.ns, str(n.underlay), store,
                                  cluster, count, incremental, rng)
                results[label] = r
                print(f"  {label:21} one task change ({count} changes): balancer p50 "
                      f"{pct(r['lb'], .5) * 1000:.1f} ms p99 {pct(r['lb'], .99) * 1000:.1f} "
                      f"ms, DNS p50 {pct(r['dns'], .5) * 1000:.1f} ms p99 "
                      f"{pct(r['dns'], .99) * 1000:.1f} ms (target p99 <= 100 ms); agent "
                      f"CPU {r['cpu'] * 1000:.1f} ms per change; RSS {r['rss']:.0f} MB; "
                      f"start-up pass {r['start']:.1f} s; periodic pass "
                      f"{r['periodic']['wall']:.2f} s (CPU {r['periodic']['cpu']:.2f} s; "
                      f"paced every {r['periodic']['every']:.0f} s at the default budget, "
                      f"3 % of a CPU; fixed 30 s before)", flush=True)
            stats = next(iter(results.values()))["stats"] if results else {}
            print(f"  holds: {stats.get('virtual_services')} VirtualServices (2 per VIP "
                  f"on a hosted network), {stats.get('dns_records')} DNS records, FDB "
                  f"entries appnet {fdb_entries(n.ns, APP_VNI)}, backnet "
                  f"{fdb_entries(n.ns, BACK_VNI)} (not hosted); load average now "
                  f"{load_average()}", flush=True)
            await store.close()
        finally:
            lab.close()
            server.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--informers":
        asyncio.run(informers_only(sys.argv[2], sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        url, prefix, ns, underlay, mode = sys.argv[2:7]
        asyncio.run(serve(url, prefix, ns, underlay, mode == "incremental"))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=40)
    ap.add_argument("--baseline-changes", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(run(args.services, args.endpoints, args.changes, args.baseline_changes))


if __name__ == "__main__":
    main()
