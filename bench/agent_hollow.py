"""Agent scale benchmark: K hollow nodes in one agent process, N tasks to run.

Measures, against a fresh etcd, with the agent as its own OS process (as in production):

* register: agent process start -> all K node reports written (K heartbeat keys
  present; the Nodes are made from the reports by the fold controller, not run here);
* run: N Tasks written already assigned (round-robin over the nodes, desired running,
  in 127-object transactions, 16 in flight, as a scheduler commits them) -> all N
  report running (the agent's own reports, ``<p>/reports/<node>/``: the agent
  alone, without the fold controller that copies them into the Tasks);
* steady state: CPU of the agent and of its heartbeat process while idle with K leases;
* restart (``--restart``): the agent SIGKILLed and started again on its
  ``--hollow-state`` -> ready again, with every workload adopted (no task rewritten).

    python bench/agent_hollow.py [--nodes 1000] [--tasks 100000] [--ttl 3] [--restart]

Tasks are counted from the raw watch stream with a substring test, so the benchmark
process spends as little CPU as possible next to the agent and etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench import common
from shoal.crds import kinds, resource
from shoal.store import client, etcd_server, projections

REG = kinds.Registry.builtin()
TASKS, NODES = REG.lookup("tasks"), REG.lookup("nodes")


def _task(i: int, nodes: int) -> resource.Resource:
    obj = resource.new("Task", f"web-{i:06d}", "bench",
                       spec={"serviceName": "web", "slot": i + 1,
                             "nodeName": f"hollow-{i % nodes}", "desiredState": "running",
                             "serviceGeneration": 1,
                             "template": {"image": "shoal/busybox",
                                          "command": ["httpd", "-f", "-p", "8080"],
                                          "env": {"SLOT": str(i + 1)},
                                          "stopGracePeriod": "10s"}},
                       labels={"shoal.io/service": "web"})
    obj.status = {"state": "assigned", "message": "scheduled"}
    return obj


async def _count(store: client.Store, prefix: bytes, since: int, want: int,
                 needle: bytes, deadline: float) -> float:
    """Seconds until ``want`` distinct keys under ``prefix`` carried ``needle``."""
    seen: set[bytes] = set()
    started = time.monotonic()
    async with asyncio.timeout(deadline):
        async for _, events in store.raw_watch(prefix, since):
            for ev in events:
                if not ev.deleted and needle in ev.value:
                    seen.add(ev.key)
            if len(seen) >= want:
                return time.monotonic() - started
    raise AssertionError("unreachable")


def _cpu(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (from /proc/PID/stat)."""
    if pid is None:
        return 0.0
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _peak_rss(pid: int) -> str:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines()
                if line.startswith("VmHWM")).split(":", 1)[1].strip()


class Agent:
    def __init__(self, args: argparse.Namespace, url: str, prefix: str,
                 log: pathlib.Path, state: pathlib.Path) -> None:
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        self.argv = [sys.executable, *profile, "-m", "shoal.agent.main", "--etcd", url,
                     "--prefix", prefix, "--runtime", "hollow", "--name", "hollow",
                     "--count", str(args.nodes),
                     "--heartbeat-ttl", str(args.ttl), "--hollow-start-delay",
                     str(args.start_delay), "--log-format", "console",
                     *(["--shared-lease"] if args.shared_lease else []),
                     *(["--hollow-state", str(state)] if args.restart else [])]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=fh)

    async def wait_log(self, pattern: str, after: int, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if re.search(pattern, self.log.read_text(errors="replace")[after:]):
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise AssertionError(f"{pattern!r} not logged within {timeout}s")

    def stop(self, sig: str = "term") -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.terminate if sig == "term" else self.proc.kill)()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)


async def run(args: argparse.Namespace) -> None:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="shoal-bench-agent-"))
    server = etcd_server.EtcdServer(tmp / "etcd" / "data")
    server.start()
    prefix = "/bench"
    store = await client.Store.connect(server.url, prefix)
    agent = Agent(args, server.url, prefix, tmp / "agent.log", tmp / "hollow.state")
    print(f"{args.nodes} hollow nodes, {args.tasks} tasks, TTL {args.ttl} s, "
          f"{os.cpu_count()} CPUs, logs in {tmp}")
    try:
        rev = await store.etcd.current_revision()
        t0 = time.monotonic()
        agent.start()
        # The node reports (the agent writes no Node; the fold controller would).
        await _count(store, projections.reports_prefix(prefix), rev + 1, args.nodes,
                     b'"state":"ready"', 300)
        beats, _ = await store.raw_list(store.raw_key("heartbeats") + b"/")
        print(f"register: {args.nodes} nodes ready {time.monotonic() - t0:.2f} s after "
              f"process start; {len(beats)} heartbeat keys")

        rev = await store.etcd.current_revision()
        reports = projections.reports_prefix(prefix)
        counter = asyncio.create_task(_count(store, reports, rev + 1,
                                             args.tasks, b'"state":"running"', 900))
        t1 = time.monotonic()
        await common.commit_all(store, [client.Op("create", TASKS, _task(i, args.nodes))
                                        for i in range(args.tasks)])
        written = time.monotonic() - t1
        await counter
        running = time.monotonic() - t1
        assert agent.proc is not None
        print(f"run: {args.tasks} tasks written in {written:.2f} s; all running "
              f"{running:.2f} s after the first write ({args.tasks / running:,.0f} tasks/s)")
        busy_cpu = _cpu(agent.proc.pid)
        print(f"agent: {busy_cpu:.1f} CPU s so far, peak memory {_peak_rss(agent.proc.pid)}")

        helper = _children(agent.proc.pid)
        idle0 = (_cpu(agent.proc.pid), sum(_cpu(p) for p in helper), time.monotonic())
        await asyncio.sleep(args.settle)
        span = time.monotonic() - idle0[2]
        print(f"idle: agent {(_cpu(agent.proc.pid) - idle0[0]) / span:.1%} of a CPU, "
              f"heartbeat process {(sum(_cpu(p) for p in helper) - idle0[1]) / span:.1%} "
              f"(over {span:.0f} s)")

        if args.restart:
            agent.stop("kill")
            size = agent.log.stat().st_size
            rev = await store.etcd.current_revision()
            agent.start()
            ready = await agent.wait_log(r"agent ready", size, 300)
            await asyncio.sleep(2.0)
            changed, _ = await store.raw_list(reports)
            rewritten = sum(1 for kv in changed if kv.mod_revision > rev)
            print(f"restart: ready {ready:.2f} s after process start (relist {args.tasks} "
                  f"tasks + adopt); {rewritten} reports rewritten afterwards "
                  f"(0 = every workload adopted)")
    finally:
        agent.stop()
        await store.close()
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)  # ~330 MB; the logs stay
    text = agent.log.read_text(errors="replace")
    print(f"agent log: {text.count('lagging')} event-loop lag warnings, "
          f"{text.count('had expired')} expired heartbeat leases, "
          f"{text.count('slower than its interval')} slow heartbeat rounds")
    stats = re.findall(r"agent stopped.*", text)
    if stats:
        print(f"agent stats: {stats[-1]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--ttl", type=int, default=3)
    p.add_argument("--start-delay", type=float, default=0.1)
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds idle after all tasks run (heartbeat cost is measured here)")
    p.add_argument("--shared-lease", action="store_true")
    p.add_argument("--restart", action="store_true",
                   help="also kill the agent, restart it and measure adoption")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="run the agent under cProfile, writing the stats to FILE")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
