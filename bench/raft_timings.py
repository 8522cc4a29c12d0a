"""Spurious etcd elections under load: does a set of raft timings hold on this machine?

    python -m bench.raft_timings [--heartbeat 100 --election 500] [--no-pre-vote]
                                 [--minutes 3] [--hogs 4]

Shorter etcd timings (``--heartbeat-interval``, ``--election-timeout``) make a leader's
death noticed sooner, but a member starved of CPU or disk for longer than the election
timeout starts an election of its own: the cluster then pauses writes for an election
while nothing has failed. This runs a 3-member mutual-TLS cluster (``EtcdCluster``, as
bench/ha.py does) with the given timings under a steady writer (a put every
10 ms through the store) while ``--hogs`` processes burn CPU
(on top of whatever else the machine runs), and counts the leader changes every member
saw (``etcd_server_leader_changes_seen_total``) after the first election. Nothing fails
during the run, so every leader change counted is a spurious one.

Prints the timings, the load average, the writes and their slowest latency, and the
leader changes seen: the figure is that count (baseline: 0).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import load_average, say
from shoal.store import client, etcd_server

HOG = "import time\nwhile True:\n    sum(range(10000))\n"


def leader_changes(member: etcd_server.EtcdServer) -> int:
    """The leader changes ``member`` has seen since it started (-1: not answering)."""
    try:
        with urllib.request.urlopen(member.url + "/metrics", timeout=2,
                                    context=member.probe_context()) as resp:
            text = resp.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("etcd_server_leader_changes_seen_total "):
            return int(float(line.split()[1]))
    return -1


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]


async def writer(store: client.Store, latencies: list[float]) -> None:
    key = b"/bench-raft/probe"
    while True:
        started = time.monotonic()
        await store.raw_put(key, str(started).encode())
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.01)


async def run(timings: etcd_server.RaftTimings, minutes: float, hogs: int) -> int:
    with tempfile.TemporaryDirectory(prefix="raft-timings-", dir="/var/tmp") as tmp:
        cluster = etcd_server.EtcdCluster(Path(tmp), 3, tls=True, timings=timings)
        cluster.start_all()
        burners = start_hogs(hogs)
        store: client.Store | None = None
        try:
            store = await client.Store.connect(cluster.urls, "/bench-raft",
                                               tls=cluster.client_bundle())
            cluster.leader()
            await asyncio.sleep(2.0)  # the first election is counted: take it as the base
            base = [leader_changes(m) for m in cluster.members]
            say(f"timings: heartbeat {timings.heartbeat_ms} ms, election {timings.election_ms}"
                f" ms, pre-vote {'on' if timings.pre_vote else 'off'}; {hogs} CPU hogs; "
                f"load average at start {load_average()}")
            latencies: list[float] = []
            writing = asyncio.create_task(writer(store, latencies))
            end = time.monotonic() + 60 * minutes
            while time.monotonic() < end:
                await asyncio.sleep(10)
                now = [leader_changes(m) for m in cluster.members]
                say(f"  {time.strftime('%H:%M:%S')} load {load_average()}: leader changes "
                    f"per member {[n - b for n, b in zip(now, base, strict=True)]}")
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
            final = [leader_changes(m) for m in cluster.members]
            changes = max(n - b for n, b in zip(final, base, strict=True))
            latencies.sort()
            say(f"writes {len(latencies)}, median {latencies[len(latencies) // 2] * 1000:.1f} "
                f"ms, max {latencies[-1] * 1000:.0f} ms; load average at end {load_average()}")
            say(f"spurious leader changes in {minutes:g} min: {changes} (baseline: 0)")
            return changes
        finally:
            for p in burners:
                p.kill()
                p.wait()
            if store is not None:
                await store.close()
            for m in cluster.members:
                m.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heartbeat", type=int, default=etcd_server.CLUSTER_TIMINGS.heartbeat_ms)
    parser.add_argument("--election", type=int, default=etcd_server.CLUSTER_TIMINGS.election_ms)
    parser.add_argument("--no-pre-vote", action="store_true")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--hogs", type=int, default=4)
    args = parser.parse_args()
    timings = etcd_server.RaftTimings(args.heartbeat, args.election, not args.no_pre_vote)
    asyncio.run(run(timings, args.minutes, args.hogs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
