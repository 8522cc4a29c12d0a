"""Programs that run *inside* user-mode-linux, started by tests/e2e/uml.py as
``python -m tests.e2e.uml_guest RUN_DIR SCENARIO [ARGS]``; each writes RUN_DIR/result.json
for the host side to assert on.

Scenarios:

* ``ipvs`` -- :class:`IpvsLoadBalancer` for real: three backend namespaces and a client
  namespace joined to the guest's root namespace (the "node") by veth pairs; a VIP
  service and a published port programmed through pyroute2, checked in the kernel's own
  listing (/proc/net/ip_vs), with real TCP connections; then an endpoint removal, a
  service removal, idempotent re-syncs, adoption by a fresh balancer, drift repair, a
  whole-VIP (port 0) service balancing two ports (added, re-synced, adopted, removed)
  and teardown. Everything observed is recorded; the host test decides what is right.
* ``bench N E CHANGES`` -- the dataplane benchmark's IPVS measurement (bench/dataplane.py).
* ``hello`` -- boots and reports the kernel, to test the boot recipe itself;
* ``hang`` -- never finishes, to test that a stuck guest is killed and cleaned up.

The backends and the client live in this one process: a socket belongs to the network
namespace it was created in, so a thread enters a namespace (setns, which affects only that
thread), creates its socket and leaves. That saves a Python start-up per namespace, which
is slow under UML.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.e2e.uml import write_result

VIP = "10.254.0.10"
PORT = 80
PUBLISHED = 30080
BACKEND_PORT = 8080
WHOLE_VIP = "10.254.0.20"  # balances every port: backends listen on WHOLE_PORTS
WHOLE_PORTS = (8081, 9090)
BACKENDS = {f"b{i}": (f"10.1.{i}.1", f"10.1.{i}.2") for i in (1, 2, 3)}  # node end, task
CLIENT = ("10.9.0.1", "10.9.0.2")  # node end, client
T = TypeVar("T")


def ip_batch(commands: list[str], netns: str | None = None) -> None:
    """Many ``ip`` commands in one process (a process start costs tens of ms in UML)."""
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into the named network namespace."""
    from shoal.net import netns

    netns.enter(f"/run/netns/{name}")


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread inside namespace ``name`` and return its result."""
    from shoal.net import netns

    return netns.run_in(f"/run/netns/{name}", fn)


def serve(name: str, listener: socket.socket, tag: str = "") -> None:
    """Answer every connection with ``<name> <peer address>`` (then ``tag``): the peer
    address shows whether the node masqueraded the client."""
    while True:
        conn, peer = listener.accept()
        with conn:
            conn.sendall(f"{name} {peer[0]}{tag}".encode())


def start_backend(name: str, addr: str, port: int, *, say_port: bool = False) -> None:
    """A listener answering as :func:`serve`; ``say_port`` adds `` <port>``."""
    def listen() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(128)
        return s

    listener = in_netns(name, listen)
    tag = f" {port}" if say_port else ""
    threading.Thread(target=serve, args=(name, listener, tag), daemon=True).start()


def connect_many(host: str, port: int, count: int, timeout: float = 2.0) -> list[str]:
    """``count`` sequential connections; each reply, or ``ERR <exception>``."""
    replies = []
    for _ in range(count):
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                replies.append(s.recv(256).decode() or "ERR empty")
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, "")
            replies.append(f"ERR {exc.__class__.__name__} {code}".rstrip())
    return replies


def read(path: str) -> str:
    return Path(path).read_text()


def proc_ip_vs() -> str:
    return read("/proc/net/ip_vs")


def links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                          text=True).stdout


def build_topology() -> None:
    root = [f"netns add {ns}" for ns in [*BACKENDS, "cl"]]
    for name, (node_end, _) in BACKENDS.items():
        root += [f"link add v{name} type veth peer name eth0 netns {name}",
                 f"addr add {node_end}/24 dev v{name}", f"link set v{name} up"]
    root += ["link add vcl type veth peer name eth0 netns cl",
             f"addr add {CLIENT[0]}/24 dev vcl", "link set vcl up"]
    ip_batch(root)
    for name, (node_end, task) in [*BACKENDS.items(), ("cl", CLIENT)]:
        ip_batch(["link set lo up", f"addr add {task}/24 dev eth0", "link set eth0 up",
                  f"route add default via {node_end}"], netns=name)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def companion_state(netfilter: str | None) -> str:
    """The companion's rules, comparable between snapshots (no timestamps, counters)."""
    if netfilter == "iptables":
        out = []
        for table in ("mangle", "nat"):
            saved = subprocess.run(["iptables-legacy-save", "-t", table],
                                   capture_output=True, text=True).stdout
            out += [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in saved.splitlines()
                    if not line.startswith("#")]
        return "\n".join(out) + "\n"
    if netfilter == "nftables":
        return subprocess.run(["nft", "list", "ruleset"], capture_output=True,
                              text=True).stdout
    return ""


def dummy_addresses() -> list[str]:
    proc = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "shoal-ipvs0"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    return sorted(line.split()[3] for line in proc.stdout.splitlines())


async def scenario_ipvs(result: dict[str, Any]) -> None:
    from shoal.net.lb import VirtualService
    from shoal.net.lb_factory import detect_backend
    from shoal.net.lb_ipvs import IpvsLoadBalancer, kernel_view

    steps: dict[str, Any] = result["steps"]
    t0 = time.monotonic()
    steps["detect_backend"] = detect_backend()
    build_topology()
    for name, (_, task) in BACKENDS.items():
        start_backend(name, task, BACKEND_PORT)
        for port in WHOLE_PORTS:
            start_backend(name, task, port, say_port=True)
    loop = asyncio.get_running_loop()
    client = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, initializer=enter_netns, initargs=("cl",))

    async def connect(host: str, port: int, count: int) -> list[str]:
        return await loop.run_in_executor(client, connect_many, host, port, count)

    def snapshot(lb: IpvsLoadBalancer) -> dict[str, Any]:
        return {"view": kernel_view(proc_ip_vs()), "dummy": dummy_addresses(),
                "companion": companion_state(lb.netfilter)}

    backends = [f"{task}:{BACKEND_PORT}" for _, task in BACKENDS.values()]
    web = VirtualService.make(VIP, PORT, "tcp", backends)
    mesh = VirtualService.make(None, PUBLISHED, "tcp", backends)
    result["timings"] = timings = {"setup": time.monotonic() - t0}

    lb = IpvsLoadBalancer()
    try:
        t = time.monotonic()
        await lb.sync([web, mesh])
        timings["first_sync"] = time.monotonic() - t
        steps["netfilter"] = lb.netfilter
        steps["conntrack_sysctl"] = read("/proc/sys/net/ipv4/vs/conntrack").strip()
        steps["synced"] = snapshot(lb)
        # The backends answer directly first (proves the topology, not the balancer).
        steps["direct"] = [
            (await connect(task, BACKEND_PORT, 1))[0] for _, task in BACKENDS.values()]
        steps["vip_replies"] = await connect(VIP, PORT, 30)
        steps["published_replies"] = await connect(CLIENT[0], PUBLISHED, 30)

        t = time.monotonic()
        await lb.update_service(VirtualService.make(VIP, PORT, "tcp",
                                                    [b for b in backends if "10.1.2." not in b]))
        timings["update_service"] = time.monotonic() - t
        steps["updated"] = snapshot(lb)
        steps["updated_replies"] = await connect(VIP, PORT, 30)

        t = time.monotonic()
        await lb.remove_service(web.key)
        timings["remove_service"] = time.monotonic() - t
        steps["removed"] = snapshot(lb)
        steps["removed_replies"] = await connect(VIP, PORT, 2)
        steps["published_after_remove"] = await connect(CLIENT[0], PUBLISHED, 6)

        views = []
        for _ in range(2):
            await lb.sync([web, mesh])
            views.append(snapshot(lb))
        steps["resynced"] = views
        steps["resynced_replies"] = await connect(VIP, PORT, 9)

        # A restarted agent: a fresh balancer adopts what is there, and what it is not
        # told about any more (the published port) goes -- found by ownership alone.
        await lb.close()
        lb = IpvsLoadBalancer()
        await lb.sync([web])
        steps["adopted"] = snapshot(lb)

        # Drift nobody told the balancer about: a real server deleted behind its back.
        from pyroute2.ipvs import AsyncIPVS, IPVSDest, IPVSService

        from shoal.net.lb_ipvs import service_fields
        async with AsyncIPVS() as raw:
            await raw.setup_endpoint()  # binds the IPVS family; requests need it first
            await raw.dest("del", service=IPVSService(**service_fields(web)),
                           dest=IPVSDest(addr=BACKENDS["b1"][1], port=BACKEND_PORT))
        steps["drifted"] = snapshot(lb)
        steps["repair_report"] = await lb.repair()
        steps["repaired"] = snapshot(lb)
        steps["repair_again"] = await lb.repair()  # nothing drifted: nothing reported
        await lb.resync()
        steps["resynced_after_repair"] = snapshot(lb)

        await whole_vip_steps(lb, steps, snapshot, connect)

        await lb.teardown()
        steps["torn_down"] = snapshot(lb)
        steps["torn_down_links"] = links()
        steps["torn_down_vip_replies"] = await connect(VIP, PORT, 1)
    finally:
        await lb.close()
        client.shutdown(wait=False)


async def whole_vip_steps(lb: Any, steps: dict[str, Any],
                          snapshot: Callable[[Any], dict[str, Any]],
                          connect: Callable[[str, int, int], Any]) -> None:
    """A VIP balancing every port (port 0, as the agent programs service VIPs): one
    fwmark service per protocol, real servers on port 0 (the client's port is kept)."""
    from shoal.net.lb import VirtualService
    from shoal.net.lb_ipvs import IpvsLoadBalancer

    whole = [f"{task}:0" for _, task in BACKENDS.values()]
    tcp = VirtualService.make(WHOLE_VIP, 0, "tcp", whole)
    udp = VirtualService.make(WHOLE_VIP, 0, "udp", whole)

    def counting(balancer: Any) -> list[str]:
        """Record every netlink command the balancer sends from now on."""
        sent: list[str] = []
        run = balancer._run

        async def recording(commands: list[Any], *, addresses: bool = False) -> None:
            sent.extend(c.what for c in commands)
            await run(commands, addresses=addresses)

        balancer._run = recording
        return sent

    sent = counting(lb)
    await lb.update_service(tcp)  # incremental: address, fwmark service, then the mark
    await lb.update_service(udp)
    steps["whole_added"] = snapshot(lb)
    steps["whole_added_commands"] = list(sent)
    steps["whole_replies"] = {str(port): await connect(WHOLE_VIP, port, 30)
                              for port in WHOLE_PORTS}

    # Idempotent: two full syncs of the same model send nothing and change nothing.
    sent.clear()
    for _ in range(2):
        await lb.sync(list(lb.services.values()))
    steps["whole_resynced"] = snapshot(lb)
    steps["whole_resync_commands"] = list(sent)

    # A restarted agent adopts the fwmark services (the mark holds part of the VIP; the
    # dummy device's addresses complete it) without sending anything.
    await lb.close()
    fresh = IpvsLoadBalancer()
    try:
        sent = counting(fresh)
        await fresh.sync(list(lb.services.values()))
        steps["whole_adopted"] = snapshot(fresh)
        steps["whole_adopt_commands"] = list(sent)

        await fresh.remove_service(tcp.key)  # incremental: mark, service; udp stays
        steps["whole_tcp_removed"] = snapshot(fresh)
        steps["whole_tcp_removed_replies"] = await connect(WHOLE_VIP, WHOLE_PORTS[1], 2)
        await fresh.remove_service(udp.key)  # the VIP's last service: its address goes
        steps["whole_removed"] = snapshot(fresh)
    finally:
        await fresh.close()


async def scenario_bench(result: dict[str, Any], n: int, e: int, changes: int) -> None:
    from bench.dataplane import bench_ipvs_here
    result["bench"] = await bench_ipvs_here(n, e, changes)


def main(argv: list[str]) -> int:
    run_dir, scenario, *rest = argv
    result: dict[str, Any] = {"scenario": scenario, "kernel": platform.release(),
                              "error": None}
    try:
        if scenario == "hello":
            result["has_ip_vs_module"] = any(
                Path(f"/usr/lib/uml/modules/{platform.release()}").rglob("ip_vs.ko"))
        elif scenario == "hang":
            threading.Event().wait()
        elif scenario == "ipvs":
            # Nothing IPVS-related is loaded yet: detection must pull the module in.
            result["steps"] = {"ip_vs_loaded_before_detect": os.path.exists("/proc/net/ip_vs")}
            asyncio.run(scenario_ipvs(result))
        elif scenario == "bench":
            asyncio.run(scenario_bench(result, *(int(x) for x in rest)))
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    except BaseException:
        result["error"] = traceback.format_exc()
    write_result(run_dir, result)
    print(result["error"] or "ok", file=sys.stderr)
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
