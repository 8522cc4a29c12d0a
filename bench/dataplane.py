"""Dataplane benchmark: load-balancer programming at scale and overlay throughput.

    python -m bench.dataplane [--services 10000] [--endpoints 10] [--changes 20]
                              [--iperf-seconds 5] [--iperf-runs 1] [--skip-iperf]
                              [--overlay-labs steered,plain]
                              [--ipvs-uml | --no-ipvs-uml] [--skip-nftables]
                              [--agent | --no-agent] [--agent-only]
                              [--agent-changes 40] [--agent-baseline-changes 5]

* For each load-balancer backend this kernel can run (nftables here; IPVS when
  /proc/net/ip_vs exists): a full sync of N services x E endpoints into an empty
  namespace, a full re-sync over the existing table, and the median/max time of one
  endpoint change at that size -- printed beside the targets (full sync <= 0.5 s, one
  change <= 50 ms). nftables: the netlink full sync (shoal.net.nftnl) and its drift
  repair (idle, and one service's backends deleted by hand) and a restarted agent's
  adoption of the table (a fresh balancer's first sync over it), beside the baseline of the
  whole table as nft text, with libnftables and with the nft binary.
* IPVS command building: host CPU to build and encode the 110,000 commands of a full
  sync (no kernel needed).
* IPVS under user-mode-linux (``--ipvs-uml``; the default when /usr/bin/linux.uml exists
  and this kernel has no IPVS): the same measurement inside a UML guest booted by
  tests/e2e/uml.py. UML runs every guest system call through ptrace, so its numbers are
  an upper bound for a native kernel, not a substitute for one.
* Overlay throughput: iperf3 between two task namespaces on two lab nodes over VXLAN, and
  between two task namespaces on one node (same bridge), and their ratio (target >= 0.9);
  each node also holds Shoal's nftables balancer table, as a real node does.
  ``--iperf-runs N`` repeats the pair N times on one lab, cross-node and same-node
  interleaved so a load change on the machine hits both legs alike, and prints every run
  with the load average beside it, then the min and median ratio. Measured on a lab
  whose nodes hand what their underlay receives to one CPU (RPS to a fixed CPU, as a
  NIC's interrupt affinity: the receive work off the CPU the tasks run on, as on a second
  machine; ``steer_receive``), then, as the baseline, on the lab without it (both nodes'
  kernel work on the sending CPU).

* The agent (``bench/dataplane_agent.py``, its own module): with the services and
  endpoints above in etcd, one task change's time from the etcd write to a real
  Dataplane's balancer and DNS reflecting it (p50/p99), its CPU per change and memory,
  beside the same changes through the full-plan path.

Everything runs in namespaces this benchmark creates and removes; traffic never leaves
them. Needs root, nftables and iperf3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import time
from typing import Any

from bench import dataplane_agent
from bench.common import load_average
from shoal.net import ipvs_netlink
from shoal.net.lb import VirtualService
from shoal.net.lb_ipvs import IpvsLoadBalancer, kernel_view, service_commands
from shoal.net.lb_nftables import NftablesLoadBalancer
from shoal.net.overlay import OverlayNode
from tests.e2e.netcluster import Cluster
from tests.e2e.netlab import Lab

IPVS_PRESENT = os.path.exists("/proc/net/ip_vs")
UML_PRESENT = os.access("/usr/bin/linux.uml", os.X_OK)


def services(n: int, e: int) -> list[VirtualService]:
    return [VirtualService.make(f"10.254.{i // 250 % 256}.{i % 250 + 1}", 80 + i // 64000,
                                "tcp", [f"10.{1 + i // 250 % 200}.{i % 250}.{j + 1}:8080"
                                        for j in range(e)])
            for i in range(n)]


async def bench_nftables(n: int, e: int, changes: int, runner: str,
                         full_sync: str = "netlink") -> dict[str, float]:
    lab = Lab()
    try:
        ns = lab.ns("lb")
        lb = NftablesLoadBalancer(netns=ns, runner_kind=runner,  # type: ignore[arg-type]
                                  full_sync=full_sync)  # type: ignore[arg-type]
        try:
            r = await measure(lb, n, e, changes)
            if full_sync == "netlink":
                r.update(await measure_repair(lab, ns, lb))
                r.update(await measure_adoption(ns, lb))
            return r
        finally:
            await lb.close()
    finally:
        lab.close()


async def measure_repair(lab: Lab, ns: str, lb: NftablesLoadBalancer) -> dict[str, float]:
    """repair() with nothing drifted (the periodic pass's cost), and after one service's
    backends were deleted by hand (10 elements to put back)."""
    t0 = time.perf_counter()
    quiet = await lb.repair()
    idle = time.perf_counter() - t0
    assert quiet == [], quiet
    victim = next(iter(lb.services.values()))
    keys = ", ".join(f"{victim.vip} . {victim.port} . {i}" for i in range(len(victim.backends)))
    lab.exec(ns, "nft", "delete", "element", "ip", "shoal", "be_tcp", f"{{ {keys} }}")
    t0 = time.perf_counter()
    fixed = await lb.repair()
    drift = time.perf_counter() - t0
    assert len(fixed) == 1, fixed
    return {"repair_idle": idle, "repair_one": drift}


async def measure_adoption(ns: str, lb: NftablesLoadBalancer
                           ) -> dict[str, float]:
    """A restarted agent: a fresh balancer's first sync over the table the first one left
    (the services as they now are), which adopts it -- reads it back and writes only the
    difference, here nothing."""
    fresh = NftablesLoadBalancer(netns=ns)
    try:
        t0, c0 = time.perf_counter(), cpu()
        await fresh.sync(list(lb.services.values()))
        wall, used = time.perf_counter() - t0, cpu() - c0
        assert fresh.last_full_sync == "adopted", fresh.last_full_sync
        assert fresh.adoption_report() == []
        return {"adopt": wall, "adopt_cpu": used}
    finally:
        await fresh.close()


def bench_ipvs_build(n: int, e: int, rounds: int = 3) -> dict[str, float]:
    """Host CPU to build (and encode for the wire) the IPVS commands of a full sync into
    an empty kernel: no kernel needed, so it runs here even without IPVS. CPU time, not
    wall time: other engineers share this machine."""
    svcs = services(n, e)
    build: list[float] = []
    encode: list[float] = []
    count = 0
    for _ in range(rounds):
        t0 = time.process_time()
        commands = [c for s in svcs for c in service_commands(s, None)]
        t1 = time.process_time()
        wire = b"".join(ipvs_netlink.encode(0x20, i, c) for i, c in enumerate(commands))
        t2 = time.process_time()
        build.append(t1 - t0)
        encode.append(t2 - t1)
        count = len(commands)
        del wire
    return {"commands": count, "build": statistics.median(build),
            "encode": statistics.median(encode)}


async def measure(lb: IpvsLoadBalancer | NftablesLoadBalancer, n: int, e: int,
                  changes: int) -> dict[str, float]:
    """Full sync, re-sync and single endpoint changes on one balancer."""
    svcs = services(n, e)
    t0, c0 = time.perf_counter(), cpu()
    await lb.sync(svcs)
    full, full_cpu = time.perf_counter() - t0, cpu() - c0
    t0, c0 = time.perf_counter(), cpu()
    await lb.resync()
    resync, resync_cpu = time.perf_counter() - t0, cpu() - c0
    one: list[float] = []
    for k in range(changes):
        base = svcs[(k * 997) % n]
        # Drop one endpoint, then (next round) another service gains one back.
        endpoints = list(base.backends)[: e - 1 - (k % 2)]
        changed = VirtualService(base.vip, base.port, base.protocol, tuple(endpoints))
        t0 = time.perf_counter()
        await lb.update_service(changed)
        one.append(time.perf_counter() - t0)
    return {"full": full, "resync": resync, "one_median": statistics.median(one),
            "one_max": max(one), "full_cpu": full_cpu, "resync_cpu": resync_cpu}


def cpu() -> float:
    """CPU seconds of this process (every thread, kernel time of its system calls --
    which includes the kernel applying a netlink batch) and of its waited-for children
    (the nft binary): on a machine shared with other engineers, the figure that does not
    depend on who else is running."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


async def bench_ipvs_here(n: int, e: int, changes: int) -> dict[str, float | str]:
    """IPVS in the current network namespace of a kernel that has it -- meant for a
    throw-away kernel (the UML guest of tests/e2e/uml_guest.py ``bench``): it adds a dummy
    device and leaves nothing behind, but it does work in the namespace it runs in."""
    # IPVS refuses a real server it has no unicast route to: give all of 10/8 one.
    await asyncio.to_thread(_ip_batch, ["link add bench0 type dummy",
                                        "addr add 10.0.0.1/8 dev bench0", "link set bench0 up"])
    lb = IpvsLoadBalancer()
    try:
        r: dict[str, float | str] = dict(await measure(lb, n, e, changes))
        listing = kernel_view(await asyncio.to_thread(_read, "/proc/net/ip_vs"))
        r["services_in_kernel"] = len(listing)
        r["real_servers_in_kernel"] = sum(len(d) for d in listing.values())
        r["netfilter"] = lb.netfilter or ""
        await lb.teardown()
    finally:
        await lb.close()
        await asyncio.to_thread(_ip_batch, ["link del bench0"])
    return r


def _ip_batch(commands: list[str]) -> None:
    subprocess.run(["ip", "-batch", "-"], input="\n".join(commands) + "\n", text=True,
                   check=True)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def bench_ipvs_uml(n: int, e: int, changes: int) -> dict[str, Any]:
    from tests.e2e.uml import run_python
    # Guest memory: ~100 MB of Python objects and ~60 MB of IPVS state at 10,000 x 10.
    run = run_python("tests.e2e.uml_guest", "bench", str(n), str(e), str(changes),
                     mem_mb=1024, timeout=3600)
    if run.result["error"]:
        raise RuntimeError(f"IPVS benchmark in UML failed:\n{run.result['error']}")
    r: dict[str, Any] = run.result["bench"]
    r["uml_seconds"] = run.seconds
    return r


def iperf(lab: Lab, client_ns: str, server_ns: str, server_ip: str, seconds: int,
          cpus: tuple[int, int] | None = None) -> float:
    """Bits per second received; ``cpus``: the (client, server) CPUs to pin them to."""
    client_pin, server_pin = (["taskset", "-c", str(cpus[0])], ["taskset", "-c", str(cpus[1])]
                              ) if cpus else ([], [])
    if server_ns not in _servers:
        # Not one-off (-1): a probe that races the server's start-up would consume it.
        lab.spawn(server_ns, *server_pin, "iperf3", "-s", "-B", server_ip)
        _servers.add(server_ns)
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(["ip", "netns", "exec", client_ns, *client_pin, "iperf3", "-c",
                              server_ip, "-t", str(seconds), "-J"],
                             capture_output=True, text=True)
        data = json.loads(out.stdout)
        # iperf3 -J may exit 0 on "connection refused": look at the JSON, not the code.
        if "error" not in data:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3: {data['error']}")
        time.sleep(0.2)  # server not listening yet
    bps: float = data["end"]["sum_received"]["bits_per_second"]
    return bps


_servers: set[str] = set()  # namespaces (lab-unique names) with an iperf3 server running


def steer_receive(lab: Lab, ns: str, cpu: int) -> None:
    """RPS on a lab node's underlay end, every packet to CPU ``cpu``: what a NIC whose
    interrupt is pinned to one core does. A veth delivers what it receives on the sending
    CPU, so without it the lab runs the receiving node's work (VXLAN decapsulation, its
    bridge, the task's veth) serially after the sender's, on the sender's CPU; between
    two machines the receiver's NIC and CPUs do that work. The same-node leg has no
    underlay, so this changes only where the lab runs the cross-node leg's receive work.

    The labs built on it (``OVERLAY_LABS``) differ in where that work goes, and the
    ratio follows the choice (bench/RESULTS.md, "Issue 18, third pass"): every node's
    receive on one CPU ("steered", a NIC's interrupt on a core of its own) 0.83-1.03;
    node i's on CPU i ("split") or, in addition, each node's iperf3 on its node's CPU
    ("pinned", one CPU per machine) 0.69-0.76, like the plain lab. RPS by the flow's
    hash over every CPU (an earlier lab) landed on one of these per run.
    """
    lab.exec(ns, "sh", "-c", "for q in /sys/class/net/eth0/queues/rx-*/rps_cpus; do "
             f"echo {1 << cpu:x} > $q; done")


OVERLAY_LABS = {
    "steered": "underlay receive steered to one CPU (RPS, as a NIC's interrupt affinity)",
    "split": "each node's underlay receive steered to a CPU of its own (node i to CPU i)",
    "pinned": "one CPU per node: node i's underlay receive and its iperf3 on CPU i (the "
              "same-node leg unpinned)",
    "plain": "baseline: the lab without steering (both nodes' work on the sending CPU)",
}


async def bench_overlay(seconds: int, runs: int = 1, *, kind: str = "steered"
                        ) -> list[dict[str, float | str]]:
    """``runs`` cross-node/same-node pairs on one lab of ``kind`` (``OVERLAY_LABS``),
    each with the 1/5/15-minute load average read right after it. "steered": the lab's
    nodes hand what their underlay receives to the machine's last CPU
    (``steer_receive``), as a NIC's interrupt would; "split": node i's to CPU i;
    "pinned": as split, and the cross-node leg's client and server on their node's CPU."""
    lab = Lab()
    try:
        nodes = [lab.node() for _ in range(2)]
        cpus = os.cpu_count() or 1
        for i, n in enumerate(nodes):
            if kind == "steered":
                steer_receive(lab, n.ns, cpus - 1)
            elif kind in ("split", "pinned"):
                steer_receive(lab, n.ns, i % cpus)
        cluster = Cluster(lab, nodes)
        a = cluster.add_task("a", 0)
        remote = cluster.add_task("remote", 1)
        local = cluster.add_task("local", 0)
        vip = cluster.alloc.allocate_vip(cluster.net, "web")
        balancers: list[NftablesLoadBalancer] = []
        for i, n in enumerate(nodes):
            await OverlayNode(n.underlay, netns=n.ns).sync(cluster.state(i))
            # What a node runs beside its overlay: Shoal's nftables table (nat hooks, so
            # conntrack sees every packet, inner ones through br_netfilter too), here with
            # one service VIP on the network. Without it both legs ran ~10 % faster.
            lb = NftablesLoadBalancer(netns=n.ns)
            await lb.sync([VirtualService.make(str(vip), 80, "tcp",
                                               [f"{cluster.ip('remote')}:80"])])
            balancers.append(lb)
        results: list[dict[str, float | str]] = []
        for _ in range(runs):
            cross = iperf(lab, a, remote, cluster.ip("remote"), seconds,
                          (0, 1 % cpus) if kind == "pinned" else None)
            same = iperf(lab, a, local, cluster.ip("local"), seconds)
            results.append({"cross_node_bps": cross, "same_node_bps": same,
                            "ratio": cross / same, "load": load_average()})
        for lb in balancers:
            await lb.close()
        return results
    finally:
        lab.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--iperf-seconds", type=int, default=5)
    ap.add_argument("--iperf-runs", type=int, default=1,
                    help="cross-node/same-node pairs to run (interleaved, one lab)")
    ap.add_argument("--skip-iperf", action="store_true")
    ap.add_argument("--overlay-labs", default="steered,plain",
                    help="comma-separated overlay labs to measure, in order: "
                         + ", ".join(OVERLAY_LABS))
    ap.add_argument("--skip-nftables", action="store_true")
    ap.add_argument("--ipvs-uml", action=argparse.BooleanOptionalAction,
                    default=UML_PRESENT and not IPVS_PRESENT,
                    help="measure IPVS inside user-mode-linux (default: when linux.uml "
                         "exists and this kernel has no IPVS)")
    # The agent's per-change figures live in bench/dataplane_agent.py.
    ap.add_argument("--agent", action=argparse.BooleanOptionalAction, default=True,
                    help="one task change through a real agent Dataplane at this scale "
                         "(bench/dataplane_agent.py)")
    ap.add_argument("--agent-only", action="store_true",
                    help="only the agent section")
    ap.add_argument("--agent-changes", type=int, default=40)
    ap.add_argument("--agent-baseline-changes", type=int, default=5)
    args = ap.parse_args()
    unknown = set(args.overlay_labs.split(",")) - set(OVERLAY_LABS)
    if unknown:
        ap.error(f"--overlay-labs: no lab {', '.join(sorted(unknown))}; "
                 f"choose from {', '.join(OVERLAY_LABS)}")
    if args.agent_only:
        await dataplane_agent.run(args.services, args.endpoints, args.agent_changes,
                                  args.agent_baseline_changes)
        return
    n, e = args.services, args.endpoints
    print(f"load balancer: {n} services x {e} endpoints "
          f"(targets: full sync <= 0.5 s, one change <= 50 ms); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def line(name: str, r: dict[str, Any]) -> str:
        cpu = (f" (cpu {r['full_cpu']:.3f} / {r['resync_cpu']:.3f} s)" if "full_cpu" in r
               else "")
        return (f"  {name:16} full sync {r['full']:.3f} s   re-sync {r['resync']:.3f} s{cpu}"
                f"   one change median {r['one_median'] * 1000:.1f} ms"
                f" max {r['one_max'] * 1000:.1f} ms")

    if not args.skip_nftables:
        # The netlink full sync (the default) beside the text path it replaced, in this
        # same process and minute: the baseline.
        r = await bench_nftables(n, e, args.changes, "lib")
        print(line("nftables/netlink", r) + f"   repair: idle {r['repair_idle']:.3f} s,"
              f" one service {r['repair_one']:.3f} s   restarted agent adopts the table: "
              f"{r['adopt']:.3f} s (cpu {r['adopt_cpu']:.3f} s), nothing written")
        print(line("baseline/text", await bench_nftables(n, e, args.changes, "lib",
                                                        "text")))
        print(line("nft binary/text", await bench_nftables(n, e, args.changes, "exec",
                                                          "text")))
    b = bench_ipvs_build(n, e)
    print(f"  ipvs command build (host CPU, no kernel): {int(b['commands'])} commands built "
          f"in {b['build']:.3f} s, encoded in {b['encode']:.3f} s "
          f"(baseline: ~3.7 s before templates, issue 18)")
    if IPVS_PRESENT:
        print("  ipvs: this kernel has IPVS; measure it natively in a throw-away namespace "
              "with `ip netns exec <ns> python -m tests.e2e.uml_guest <dir> bench "
              f"{n} {e} {args.changes}`")
    elif not args.ipvs_uml:
        print("  ipvs: not available on this kernel (no /proc/net/ip_vs); --ipvs-uml "
              "measures it under user-mode-linux")
    if args.ipvs_uml:
        r = await asyncio.to_thread(bench_ipvs_uml, n, e, args.changes)
        print(line("ipvs/uml", r) + f"   [{int(r['services_in_kernel'])} services, "
              f"{int(r['real_servers_in_kernel'])} real servers in the kernel; companion "
              f"{r['netfilter']}; UML boot to power-off {r['uml_seconds']:.0f} s]")
        print("  (UML: one CPU, every guest system call trapped through ptrace -- an upper "
              "bound for a native kernel)")
    if not args.skip_iperf:
        # The lab with its underlay's receive work on a CPU of its own (closer to two
        # machines), then the baseline: the same lab with every node's work on the
        # sending CPU.
        for kind in args.overlay_labs.split(","):
            title = OVERLAY_LABS[kind]
            runs = await bench_overlay(args.iperf_seconds, args.iperf_runs, kind=kind)
            print(f"overlay throughput (iperf3 TCP, {args.iperf_seconds} s), {title}")
            for k, r2 in enumerate(runs, 1):
                print(f"  run {k}: cross-node {float(r2['cross_node_bps']) / 1e9:.2f} "
                      f"Gbit/s, same node {float(r2['same_node_bps']) / 1e9:.2f} Gbit/s, "
                      f"ratio {float(r2['ratio']):.2f}   (load average {r2['load']})")
            ratios = [float(r2["ratio"]) for r2 in runs]
            print(f"  ratio over {len(ratios)} run(s): min {min(ratios):.2f}, "
                  f"median {statistics.median(ratios):.2f} (target >= 0.9)")
    if args.agent:
        await dataplane_agent.run(args.services, args.endpoints, args.agent_changes,
                                  args.agent_baseline_changes)


if __name__ == "__main__":
    asyncio.run(main())
