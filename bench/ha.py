"""Fail-over benchmark: how long a kill -9 interrupts writes and placement (issue 15).

    python -m bench.ha [--rounds 3] [--no-tls] [--etcd-defaults] [--keep]

Builds, in a temporary directory, what a 3-manager cluster runs: 3 etcd members on
127.0.0.1-3 (``EtcdCluster``, serving mutual TLS as ``swctl init`` clusters do unless
``--no-tls``), 3 ``swctl controller-manager`` processes and a hollow agent with 3 nodes,
every process given every etcd endpoint; one service of 3 replicas. The members run the
raft timings Shoal gives its clusters (``etcd_server.CLUSTER_TIMINGS``), or etcd's own
defaults with ``--etcd-defaults`` (the baseline the timings were chosen against).
Then, ``--rounds`` times each, it SIGKILLs

* **the etcd leader** (then restarts it and waits until it serves again), and
* **the active controller-manager**, the one holding the scheduler's leader lease (then
  starts a replacement), and
* **a whole manager**: the etcd leader and the active controller-manager at once, as when
  a manager's machine dies (both brought back as above),

and measures from the kill:

* **next write**: a probe writes a key every 20 ms, each write a task of its own (the
  store's client, with its fail-over retries), so a write stuck on the dead member does
  not hold the next one back; the figure is the kill to the first write *issued after the
  kill* that succeeds. Target <= 2 s. The slowest write in flight across the kill, and
  whether it succeeded, is shown beside it.
* **next placement**: right after the kill the service is scaled up by one (through the
  same client); the figure is the kill to the new task having a node. This needs the
  orchestrator (to create the task) and the scheduler (to place it), each a leader-elected
  controller. Target <= lease TTL + 1 s.

Prints one line per kill, then the medians and maxima against the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import load_average, say
from shoal.crds import kinds
from shoal.crds import taskstates as ts
from shoal.pki.bundle import Bundle
from shoal.runtime import leader
from shoal.store import client, errors, etcd_server

REG = kinds.Registry.builtin()
SERVICES, TASKS, NODES = REG.lookup("services"), REG.lookup("tasks"), REG.lookup("nodes")
PREFIX = "/bench-ha"
SERVICE = """\
apiVersion: shoal.io/v1
kind: Service
metadata: {name: ha}
spec:
  replicas: 3
  template: {image: shoal/busybox, command: [httpd, -f, -p, "8080"]}
"""
WRITE_TARGET = 2.0
PROBE_EVERY = 0.02


@dataclasses.dataclass
class Kill:
    what: str
    write: float  # kill -> first write issued after it that succeeded
    in_flight: float  # the slowest write in flight at the kill
    in_flight_ok: bool
    placement: float  # kill -> the new task has a node


class Processes:
    """The controller-managers and the agent, as child processes logging to files."""

    def __init__(self, workdir: Path, endpoints: str, tls: Bundle | None) -> None:
        self.workdir = workdir
        self.env = dict(os.environ, SHOAL_ETCD=endpoints, SHOAL_PREFIX=PREFIX,
                        SHOAL_KEYRING=str(workdir / "keyring.json"), PYTHONUNBUFFERED="1")
        if tls is not None:
            self.env.update(SHOAL_ETCD_CA=str(tls.ca), SHOAL_ETCD_CERT=str(tls.cert),
                            SHOAL_ETCD_KEY=str(tls.key))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli", *args], env=self.env, cwd=self.workdir,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def swctl(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "shoal.cli", *args], env=self.env,
                       cwd=self.workdir, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class WriteProbe:
    """A write every ``PROBE_EVERY`` seconds, each in its own task: (issued, done, ok)."""

    def __init__(self, store: client.Store) -> None:
        self.store = store
        self.writes: list[tuple[float, float, bool]] = []
        self.pending: dict[int, float] = {}  # write number -> when it was issued
        self._key = store.raw_key("bench", "probe")
        self._tasks: set[asyncio.Task[None]] = set()

    async def _one(self, n: int) -> None:
        issued = self.pending[n] = time.monotonic()
        try:
            await self.store.raw_put(self._key, str(n).encode())
            ok = True
        except errors.StoreError:
            ok = False
        del self.pending[n]
        self.writes.append((issued, time.monotonic(), ok))

    async def run(self) -> None:
        n = 0
        while True:
            n += 1
            task = asyncio.create_task(self._one(n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(PROBE_EVERY)

    async def after(self, killed: float, timeout: float = 30.0) -> tuple[float, float, bool]:
        """(kill -> first later-issued success, slowest write in flight, it succeeded),
        once every write issued before the kill has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [done for issued, done, ok in self.writes if issued >= killed and ok]
            if later and not any(issued < killed for issued in self.pending.values()):
                across = [(done - issued, ok) for issued, done, ok in self.writes
                          if issued < killed < done]
                slowest = max(across, default=(0.0, True))
                return min(later) - killed, slowest[0], slowest[1]
            await asyncio.sleep(0.02)
        raise TimeoutError(f"writes not settled within {timeout} s of the kill")


async def scale_up(store: client.Store) -> int:
    """replicas + 1, compare-and-swap (retried on conflict); returns the new count."""
    while True:
        svc = await store.get(SERVICES, "ha")
        svc.spec["replicas"] = int(svc.spec.get("replicas", 1)) + 1
        try:
            await store.update(SERVICES, svc)
            return int(svc.spec["replicas"])
        except errors.ConflictError:
            continue


async def placed(store: client.Store, replicas: int, since: float,
                 timeout: float = 60.0) -> float:
    """Seconds from ``since`` until ``replicas`` tasks of the service desired running
    have a node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(errors.StoreError):
            tasks, _ = await store.list(TASKS)
            n = sum(1 for t in tasks if t.spec.get("serviceName") == "ha"
                    and t.spec.get("desiredState") == "running" and ts.node_name_of(t))
            if n >= replicas:
                return time.monotonic() - since
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{replicas} tasks not placed within {timeout} s")


async def wait_nodes(store: client.Store, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes, _ = await store.list(NODES)
        if sum(1 for n in nodes if n.status.get("state") == "ready") >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{count} nodes not ready within {timeout} s")


async def leaders(store: client.Store) -> dict[str, str]:
    kvs, _ = await store.raw_list(store.raw_key(*leader.LEASES) + b"/")
    return {kv.key.decode().rsplit("/", 1)[1]: kv.value.decode() for kv in kvs}


async def wait_all_led(store: client.Store, names: set[str], timeout: float = 30.0) -> None:
    """Until every controller that was led before is led again (a new round starts
    from a settled cluster)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if names <= set(await leaders(store)):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"controllers {sorted(names)} not all led within {timeout} s")


async def settle(store: client.Store, led: set[str], lease_ttl: float) -> None:
    """Let one kill's after-effects pass before the next: every controller led again,
    and two lease TTLs for leases an etcd leader change extended (etcd renews every lease
    when a new leader takes over, which would stretch the next controller take-over)."""
    await wait_all_led(store, led)
    await asyncio.sleep(2 * lease_ttl)


async def measure(store: client.Store, probe: WriteProbe, what: str,
                  kill: Callable[[], object]) -> Kill:
    replicas = int((await store.get(SERVICES, "ha")).spec["replicas"])
    await placed(store, replicas, time.monotonic())
    killed = time.monotonic()
    kill()
    new = await scale_up(store)
    assert new == replicas + 1
    placement = await placed(store, new, killed)
    write, in_flight, in_flight_ok = await probe.after(killed)
    result = Kill(what, write, in_flight, in_flight_ok, placement)
    say(f"  {what:<28} next write {write:6.3f} s (in flight across the kill: "
        f"{in_flight:.3f} s, {'ok' if in_flight_ok else 'FAILED'}); "
        f"next placement {placement:6.3f} s")
    return result


async def bench(rounds: int, lease_ttl: float, workdir: Path, tls: bool,
                timings: etcd_server.RaftTimings) -> list[Kill]:
    members = etcd_server.EtcdCluster(workdir / "etcd", 3, tls=tls, timings=timings)
    members.start_all()
    bundle = members.client_bundle() if tls else None
    procs = Processes(workdir, members.urls, bundle)
    results: list[Kill] = []
    store: client.Store | None = None
    try:
        managers = 0
        for _ in range(3):
            procs.start(f"cm-{managers}", "controller-manager", "--identity", f"cm-{managers}")
            managers += 1
        procs.start("agent", "agent", "--runtime", "hollow", "--count", "3", "--name", "n",
                    "--hollow-start-delay", "0.05")
        store = await client.Store.connect(members.urls, PREFIX, tls=bundle)
        await wait_nodes(store, 3)
        (workdir / "ha.yaml").write_text(SERVICE)
        procs.swctl("apply", "-f", str(workdir / "ha.yaml"), "--verify-window", "0.3")
        led = set(await leaders(store))
        probe = WriteProbe(store)
        probing = asyncio.create_task(probe.run())
        try:
            for _ in range(rounds):
                victim = members.leader()
                results.append(await measure(store, probe, f"etcd leader (m{victim})",
                                             functools.partial(members.kill, victim)))
                await asyncio.to_thread(members.start, victim)
                await settle(store, led, lease_ttl)

                active = (await leaders(store))["scheduler"]
                proc = procs.procs[active]
                results.append(await measure(store, probe, f"controller-manager ({active})",
                                             proc.kill))
                proc.wait()
                procs.start(f"cm-{managers}", "controller-manager", "--identity",
                            f"cm-{managers}")
                managers += 1
                await settle(store, led, lease_ttl)

                # A whole manager: its etcd member (the leader) and its controller-manager
                # (the active one) at the same moment, as when its machine dies.
                victim = members.leader()
                active = (await leaders(store))["scheduler"]
                proc = procs.procs[active]

                def kill_both(victim: int = victim,
                              proc: subprocess.Popen[bytes] = proc) -> None:
                    proc.kill()
                    members.kill(victim)
                results.append(await measure(
                    store, probe, f"whole manager (m{victim}+{active})", kill_both))
                proc.wait()
                await asyncio.to_thread(members.start, victim)
                procs.start(f"cm-{managers}", "controller-manager", "--identity",
                            f"cm-{managers}")
                managers += 1
                await settle(store, led, lease_ttl)
        finally:
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)
    finally:
        if store is not None:
            await store.close()
        procs.stop()
        for member in members.members:
            member.kill()
    return results


def summary(results: list[Kill], lease_ttl: float) -> None:
    say("")
    say("| kill | next write median / max (target <= 2 s) | next placement median / max "
        f"(target <= lease TTL + 1 = {lease_ttl + 1:g} s) | writes in flight |")
    say("| --- | --- | --- | --- |")
    for kind in ("etcd leader", "controller-manager", "whole manager"):
        rows = [r for r in results if r.what.startswith(kind)]
        if not rows:
            continue
        writes = [r.write for r in rows]
        places = [r.placement for r in rows]
        failed = sum(1 for r in rows if not r.in_flight_ok)
        verdict_w = "ok" if max(writes) <= WRITE_TARGET else "MISSED"
        # Losing etcd's leader and a controller's leader at once adds an election to the
        # lease expiry (a new etcd leader renews every lease for a TTL): no target here.
        verdict_p = ("-" if kind == "whole manager"
                     else "ok" if max(places) <= lease_ttl + 1 else "MISSED")
        say(f"| {kind} x{len(rows)} | {statistics.median(writes):.3f} / {max(writes):.3f} s "
            f"{verdict_w} | {statistics.median(places):.3f} / {max(places):.3f} s "
            f"{verdict_p} | slowest {max(r.in_flight for r in rows):.3f} s, "
            f"{failed} failed |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="kills of each kind (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--no-tls", dest="tls", action="store_false",
                        help="plain http etcd (as swctl up clusters) instead of mutual TLS")
    parser.add_argument("--etcd-defaults", action="store_true",
                        help="etcd's default raft timings instead of Shoal's cluster timings")
    args = parser.parse_args()
    lease_ttl = leader.DEFAULT_TTL
    timings = (etcd_server.ETCD_DEFAULT_TIMINGS if args.etcd_defaults
               else etcd_server.CLUSTER_TIMINGS)
    say(f"bench/ha.py: 3 etcd members ({'mutual TLS' if args.tls else 'plain http'}; "
        f"heartbeat {timings.heartbeat_ms} ms, election timeout {timings.election_ms} ms, "
        f"pre-vote {'on' if timings.pre_vote else 'off'}), "
        f"3 controller-managers (lease TTL {lease_ttl:g} s), 1 hollow agent x 3 nodes; "
        f"{args.rounds} rounds; load average {load_average()}")
    workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-ha-"))
    try:
        results = asyncio.run(bench(args.rounds, lease_ttl, workdir, args.tls, timings))
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
        else:
            say(f"logs in {workdir}")
    summary(results, lease_ttl)
    say(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
