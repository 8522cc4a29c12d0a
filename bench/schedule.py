"""Scheduling benchmark: 100,000 replicas on 1,000 hollow nodes, end to end, plus failover.

Everything runs as it does in production, each in its own OS process against a fresh
etcd: one agent process serving the hollow nodes, the built-in controllers (by default
the scheduler in a controller-manager of its own, so its memory is its own figure; the
orchestrator and the nodes controller in another; ``--one-manager`` runs all three in
one process), and this process, which applies the services and watches etcd.

Measured:

* apply -> every task created (orchestrator), -> every task assigned and committed in
  etcd (scheduler; placements/s against the targets), -> every task reports running;
* scheduler peak memory: the peak RSS (``VmHWM``) of the process running the scheduler,
  informer caches included;
* failover: once all 100,000 run, one more agent process with a single node
  (``victim``, heartbeat lease ``--victim-ttl``, 2 s) joins and every service is scaled
  up by one replica, which the scheduler places on the new, empty node (fewest tasks of
  the service); after they run and the cluster has settled, the victim is SIGKILLed and
  the clock runs until the node is marked down and until every one of its replicas has a
  replacement running elsewhere. (It joins late so that the placement figure is taken
  with the issue's 1,000 nodes and nothing else watching the tasks.)

    python bench/schedule.py [--nodes 1000] [--services 100] [--replicas 1000]

Task progress is counted from one raw watch with substring tests, so this process spends
as little CPU as it can beside the cluster it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from shoal.crds import admission, kinds
from shoal.store import client, errors, etcd, etcd_server

REG = kinds.Registry.builtin()
SERVICES, TASKS, NODES = REG.lookup("services"), REG.lookup("tasks"), REG.lookup("nodes")

MANAGER = ("import asyncio, sys\n"
           "from shoal.runtime import logging, manager\n"
           "from shoal.controllers import builtin\n"
           "logging.configure(json=True)\n"
           "names = sys.argv[3].split(',')\n"
           "specs = [s for s in builtin.controller_specs() if s.name in names]\n"
           "asyncio.run(manager.run_manager(sys.argv[1], sys.argv[2], specs))\n")

NODE_RE = re.compile(rb'"nodeName":"([^"]*)"')
TARGET_RATE = 5000.0
SWARMKIT_RATE = 100_000 / 22.6  # swarmkit's in-memory benchmark: 100k tasks, 1k nodes
NOMAD_RATE = 1500.0  # Nomad's 2-million-container challenge, average
FAILOVER_TARGET = 3.0
SWARM_FAILOVER = 15.0  # 3 missed 5 s heartbeats
MEMORY_TARGET = 1 << 30


def _status_field(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` size field (``VmHWM``, ``VmRSS``) in bytes."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    text = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


class Progress:
    """Follows every task write: created, assigned (has a node), running — per key."""

    def __init__(self) -> None:
        self.node: dict[bytes, bytes] = {}
        self.created: set[bytes] = set()
        self.running: set[bytes] = set()
        self.t_created: float | None = None
        self.t_assigned: float | None = None
        self.t_running: float | None = None
        self.first_assigned: float | None = None
        self.want = 0
        self.after_kill: set[bytes] | None = None  # tasks created after the victim died
        self.changed = asyncio.Event()

    def feed(self, key: bytes, value: bytes, now: float) -> None:
        if key not in self.created:
            self.created.add(key)
            if self.after_kill is not None:
                self.after_kill.add(key)
            if len(self.created) == self.want and self.t_created is None:
                self.t_created = now
        if key not in self.node and b'"nodeName":' in value:
            match = NODE_RE.search(value)
            if match:
                self.node[key] = match.group(1)
                if self.first_assigned is None:
                    self.first_assigned = now
                if len(self.node) == self.want and self.t_assigned is None:
                    self.t_assigned = now
        if b'"state":"running"' in value and b'"desiredState":"running"' in value:
            if key not in self.running:
                self.running.add(key)
                if len(self.running) == self.want and self.t_running is None:
                    self.t_running = now
        elif key in self.running:
            self.running.discard(key)

    async def follow(self, store: client.Store, since: int) -> None:
        prefix = store.kind_prefix(TASKS)
        async for _, events in store.raw_watch(prefix, since + 1):
            now = time.monotonic()
            for ev in events:
                if ev.deleted:
                    self.running.discard(ev.key)
                else:
                    self.feed(ev.key, ev.value, now)
            self.changed.set()

    async def until(self, done: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self.changed.wait()


async def raw_write_rate(store: client.Store, writes: int = 30_000) -> float:
    """The machine's etcd write ceiling right now: task-sized values (700 bytes) put in
    127-put transactions, 8 in flight, from this process — no compares, no decoding, no
    other work. Every placement costs three task writes (created, assigned, running), so
    a third of this bounds placements/s before any Shoal code runs."""
    value = b"x" * 700
    sem = asyncio.Semaphore(8)

    async def one(start: int) -> None:
        async with sem:
            await store.etcd.txn([], [etcd.op_put(store.raw_key("bench-raw", str(i)), value)
                                      for i in range(start, min(start + 127, writes))])
    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(0, writes, 127)))
    rate = writes / (time.monotonic() - t0)
    for start in range(0, writes, 127):  # leave etcd as it was
        await store.etcd.txn([], [etcd.op_delete(store.raw_key("bench-raw", str(i)))
                                  for i in range(start, min(start + 127, writes))])
    return rate


def _spawn(argv: list[str], log: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


async def _nodes_ready(store: client.Store, names: set[str], timeout: float) -> float:
    started = time.monotonic()
    while True:
        nodes, _ = await store.list(NODES)
        if names <= {n.name for n in nodes if n.status.get("state") == "ready"}:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{len(names)} nodes not ready within {timeout} s")
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> int:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="shoal-bench-schedule-"))
    server = None
    if args.etcd:
        url = args.etcd
    else:
        server = etcd_server.EtcdServer(tmp / "etcd" / "data")
        server.start()
        url = server.url
    prefix = f"/bench-{os.getpid()}"
    store = await client.Store.connect(url, prefix)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    total = args.services * args.replicas
    print(f"shoal scheduling benchmark: {args.services} services x {args.replicas} replicas "
          f"= {total:,} tasks on {args.nodes:,} hollow nodes (+1 victim for failover); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; logs in {tmp}")
    try:
        raw = await raw_write_rate(store)
        print(f"baseline: raw etcd writes {raw:,.0f}/s on this machine now (task-sized values, "
              f"127-put transactions) -> at 3 writes per task, at most {raw / 3:,.0f} "
              "placements/s before any Shoal code runs")
        agent = [sys.executable, "-m", "shoal.agent.main", "--etcd", url, "--prefix", prefix,
                 "--runtime", "hollow", "--hollow-start-delay", str(args.start_delay),
                 "--cpus", "64", "--memory", "256Gi"]
        procs["agent"] = _spawn([*agent, "--name", "hollow", "--count", str(args.nodes),
                                 "--heartbeat-ttl", str(args.fleet_ttl)], tmp / "agent.log")
        names = {f"hollow-{i}" for i in range(args.nodes)}

        later = args.scheduler_later
        # fold: the agents report their nodes and their tasks' status under their own
        # keys, and the fold controller creates the Nodes and copies the status into the
        # Tasks ("running" below is read from the Tasks), so it runs from the start.
        if args.one_manager and not later:
            managers = {"manager": "nodes,fold,orchestrator,scheduler"}
        else:
            managers = {"manager": "nodes,fold,orchestrator", "scheduler": "scheduler"}

        def start_manager(name: str) -> None:
            procs[name] = _spawn([sys.executable, "-c", MANAGER, url, prefix,
                                  managers[name]], tmp / f"{name}.log")
        for name in managers:
            if not (later and name == "scheduler"):
                start_manager(name)
        ready = await _nodes_ready(store, names, 600)
        print(f"nodes: {len(names):,} ready {ready:.1f} s after the agents started")
        await asyncio.sleep(args.warmup)  # leaders elected, informers synced

        progress = Progress()
        progress.want = total
        revision = await store.etcd.current_revision()
        follower = asyncio.create_task(progress.follow(store, revision))
        pids = {n: p.pid for n, p in procs.items()}
        # The agent's heartbeat child keeps the 1,000 leases alive; its CPU is its own
        # figure (it is not in the agent's, and on a real fleet it would be spread over
        # 1,000 machines, while etcd's share of the keepalives is in etcd's).
        for child in _children(procs["agent"].pid)[:1]:
            pids["heartbeat"] = child
        if server is not None and server.proc is not None:
            pids["etcd"] = server.proc.pid
        cpu0 = {n: _cpu(pid) for n, pid in pids.items()}
        self_cpu0 = time.process_time()
        t0 = time.monotonic()
        for i in range(args.services):
            doc = {"apiVersion": "shoal.io/v1", "kind": "Service",
                   "metadata": {"name": f"svc-{i:03d}", "namespace": "bench"},
                   "spec": {"replicas": args.replicas,
                            "template": {"image": "shoal/busybox",
                                         "command": ["httpd", "-f", "-p", "8080"]}}}
            await store.create(SERVICES, admission.admit(doc, REG))
        applied = time.monotonic() - t0
        t_sched = t0
        if later:
            await progress.until(lambda: progress.t_created is not None, args.timeout,
                                 "all tasks created")
            start_manager("scheduler")
            pids["scheduler"] = procs["scheduler"].pid
            cpu0["scheduler"] = 0.0
            t_sched = time.monotonic()
        sched_pid = procs["scheduler" if "scheduler" in procs else "manager"].pid
        await progress.until(lambda: progress.t_assigned is not None, args.timeout,
                             "all tasks assigned")
        await progress.until(lambda: progress.t_running is not None, args.timeout,
                             "all tasks running")
        assert progress.t_created and progress.t_assigned and progress.t_running
        created = progress.t_created - t0
        assigned = progress.t_assigned - t0
        running = progress.t_running - t0
        rate = total / (progress.t_assigned - t_sched)
        sched_rate = total / max(progress.t_assigned - (progress.first_assigned or t0), 1e-3)
        cpu = {n: _cpu(pid) - cpu0[n] for n, pid in pids.items()}
        cpu["bench"] = time.process_time() - self_cpu0
        peak = _status_field(sched_pid, "VmHWM")
        print(f"apply: {args.services} services written in {applied:.2f} s")
        print(f"created: all {total:,} tasks in etcd {created:.2f} s after apply "
              f"(orchestrator: {total / created:,.0f} tasks/s)")
        target = (f"[target >= {TARGET_RATE:,.0f}/s; swarmkit in-memory "
                  f"~{SWARMKIT_RATE:,.0f}/s; Nomad ~{NOMAD_RATE:,.0f}/s]")
        if later:
            print(f"assigned: scheduler started after all tasks were pending; all {total:,} "
                  f"assigned and committed {progress.t_assigned - t_sched:.2f} s after its "
                  f"process started = {rate:,.0f} placements/s  {target}")
        else:
            print(f"assigned: all {total:,} tasks assigned and committed {assigned:.2f} s "
                  f"after apply = {rate:,.0f} placements/s  {target}")
        print(f"          first to last assignment: {sched_rate:,.0f} placements/s")
        print(f"running: all {total:,} tasks report running {running:.2f} s after apply "
              f"({total / running:,.0f} tasks/s end to end)")
        label = "scheduler process" if "scheduler" in procs else "controller-manager"
        print(f"memory: {label} peak RSS {_mib(peak)}  [target <= {_mib(MEMORY_TARGET)}]")
        print(f"cpu seconds from apply to all running ({running:.0f} s x {os.cpu_count()} "
              "CPUs): " + ", ".join(f"{n} {c:.1f}" for n, c in cpu.items()))

        # --- failover: a node joins, takes one more replica of every service, dies ---
        procs["victim"] = _spawn([*agent, "--name", "victim", "--heartbeat-ttl",
                                  str(args.victim_ttl)], tmp / "victim.log")
        await _nodes_ready(store, {"victim"}, 120)
        for i in range(args.services):
            while True:
                svc = await store.get(SERVICES, f"svc-{i:03d}", "bench")
                svc.spec["replicas"] = args.replicas + 1
                try:
                    await store.update(SERVICES, svc)
                    break
                except errors.ConflictError:
                    continue  # the orchestrator wrote its status meanwhile

        def on_victim() -> set[bytes]:
            return {k for k, node in progress.node.items() if node == b"victim"
                    and k in progress.running}
        await progress.until(lambda: len(on_victim()) >= args.services, 120,
                             "the victim's replicas running")
        # Steady state before the kill: the controllers' caches have caught up.
        await asyncio.sleep(args.settle)
        victims = on_victim()
        progress.after_kill = set()
        killed = time.monotonic()
        procs["victim"].send_signal(signal.SIGKILL)
        down_at: float | None = None

        async def watch_down() -> None:
            nonlocal down_at
            while down_at is None:
                with contextlib.suppress(errors.StoreError):
                    node = await store.get(NODES, "victim")
                    if node.status.get("state") == "down":
                        down_at = time.monotonic()
                        return
                await asyncio.sleep(0.01)
        downer = asyncio.create_task(watch_down())

        def replaced() -> bool:
            fresh = progress.after_kill or set()
            moved = {k for k in fresh if k in progress.running
                     and progress.node.get(k) not in (None, b"victim")}
            return len(moved) >= len(victims)
        await progress.until(replaced, 120, "victim's replicas running elsewhere")
        moved = time.monotonic() - killed
        await asyncio.wait_for(downer, 10)
        assert down_at is not None
        ok = "ok" if moved <= FAILOVER_TARGET else "MISSED"
        print(f"failover: victim SIGKILLed holding {len(victims)} running replicas; marked "
              f"down after {down_at - killed:.2f} s; all {len(victims)} replacements running "
              f"elsewhere after {moved:.2f} s with a {args.victim_ttl} s lease  "
              f"[target <= {FAILOVER_TARGET:.0f} s, {ok}; Swarm ~{SWARM_FAILOVER:.0f} s]")
        peak = _status_field(sched_pid, "VmHWM")
        print(f"memory after failover: {label} peak RSS {_mib(peak)}; "
              f"load average now {os.getloadavg()[0]:.1f}")
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        results = [rate >= TARGET_RATE, peak <= MEMORY_TARGET, moved <= FAILOVER_TARGET]
        return 0 if all(results) else 1
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        await store.close()
        if server is not None:
            server.stop()
            # 600+ MB of WAL and database per run; the logs stay for reading.
            shutil.rmtree(server.data_dir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--replicas", type=int, default=1000, help="replicas per service")
    p.add_argument("--fleet-ttl", type=int, default=3,
                   help="heartbeat lease TTL of the hollow fleet (default 3)")
    p.add_argument("--victim-ttl", type=int, default=2,
                   help="heartbeat lease TTL of the node that is killed (default 2)")
    p.add_argument("--start-delay", type=float, default=0.1,
                   help="hollow task start-up time (default 0.1 s)")
    p.add_argument("--one-manager", action="store_true",
                   help="run all controllers in one controller-manager process")
    p.add_argument("--scheduler-later", action="store_true",
                   help="start the scheduler only once every task is created and pending, "
                        "to time it alone (its own process)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds between starting the managers and applying (default 3)")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds between all tasks running and killing the victim")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--etcd", default=None, help="use this etcd instead of a fresh one")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
