"""One chaos run, start to finish: cluster up, watch, workload and faults, settle, check.

The phases are strictly ordered so the figures mean what they say: the watcher lists the
registry before anything is written; faults and workload stop together; "after the last
fault" is measured from the later of the last fault being put back and the last workload
command; the host check runs only once every service has converged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import structlog

from bench.chaoslib import hosts
from bench.chaoslib.cluster import PREFIX, Cluster
from bench.chaoslib.faults import KINDS, Injector
from bench.chaoslib.invariants import Checker, Violation
from bench.chaoslib.report import Result
from bench.chaoslib.watcher import Follower
from bench.chaoslib.workload import Workload
from shoal.store import client

log = structlog.get_logger("bench.chaos")


async def wait_nodes(cluster: Cluster, checker: Checker, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    prefix = f"{checker.registry}nodes/"
    while time.monotonic() < deadline:
        ready = [k for k, o in checker.objects.items() if k.startswith(prefix)
                 and (o.get("status") or {}).get("state") == "ready"]
        if len(ready) >= len(cluster.node_names):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{len(cluster.node_names)} nodes not ready within {timeout} s")


async def look_at_hosts(watch: hosts.RunningWatch, every: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every)
        watch.look()


async def run(workdir: Path, seed: int, duration: float, nodes: int,
              max_faults: int | None = None, settle: float = 120.0, stack: bool = True,
              fault_gap: tuple[float, float] = (1.0, 6.0),
              kinds: tuple[str, ...] = KINDS,
              hold: tuple[float, float] = (0.5, 5.0), netns: bool = False,
              etcd_quota: int | None = None, process_nodes: int = 0,
              clocks: bool = False) -> Result:
    cluster = Cluster(workdir, nodes, netns=netns, etcd_quota=etcd_quota,
                      process_nodes=process_nodes, clocks=clocks)
    try:
        cluster.start_etcd()
    except BaseException:
        cluster.stop()  # the underlay too
        raise
    assert cluster.bundle is not None
    store = await client.Store.connect(cluster.etcd.urls, PREFIX, tls=cluster.bundle)
    registry = store.raw_key("registry").decode() + "/"
    await store.close()
    checker = Checker(registry)
    follower = Follower(cluster.endpoints, PREFIX, cluster.bundle, checker)
    await follower.start()
    following = asyncio.create_task(follower.run())
    injector = Injector(cluster, checker, seed, hold=hold, gap=fault_gap, kinds=kinds)
    workload = Workload(cluster, checker, seed)
    running = hosts.RunningWatch(checker, cluster.host_views())
    convergence: dict[str, float] = {}
    unconverged: list[str] = []
    extra: list[Violation] = []
    try:
        for name in [*cluster.managers, *cluster.node_names]:
            cluster.start(name)
        await wait_nodes(cluster, checker)
        await workload.setup(stack=stack)
        start = time.monotonic()
        until = start + duration
        looking = asyncio.create_task(look_at_hosts(running))
        try:
            await asyncio.gather(injector.run(until, max_faults),
                                 workload.run(until, stack=stack))
        finally:
            looking.cancel()
        await workload.finish()
        quiet_from = max(injector.last_restored(), workload.last_op)
        log.info("chaos over; settling", faults=len(injector.faults))
        deadline = quiet_from + settle
        while time.monotonic() < deadline:
            if following.done():
                following.result()
            await follower.caught_up(10)
            if not checker.unconverged():
                break
            await asyncio.sleep(0.2)
        unconverged = [checker.describe(svc) for svc in checker.unconverged()]
        for svc, view in checker.services.items():
            if view.converged:
                convergence[svc] = max(0.0, view.converged_time - quiet_from)
        if not unconverged:
            # The nodes catch up with the tasks a little after etcd does: poll briefly.
            host_deadline = time.monotonic() + 30
            while True:
                extra = hosts.mismatches(checker, cluster.host_views())
                if not extra or time.monotonic() > host_deadline:
                    break
                await asyncio.sleep(0.5)
        lost = [k for k in checker.owned if k not in checker.objects]
        extra += [Violation("lost", checker.revision, "a service the workload created is "
                            "missing at the end", (k,)) for k in sorted(lost)]
    finally:
        injector.stop_watching()
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await following
        cluster.stop()
    violations = checker.violations + running.violations + extra
    return Result(
        seed=seed, nodes=nodes, duration=duration, faults=injector.counts(),
        fault_errors=[f"{f.kind} {f.victim}: {f.error}" for f in injector.faults if f.error],
        violations=violations, convergence=convergence, unconverged=unconverged,
        revisions=checker.revisions_seen, watch_reopened=follower.reopened,
        gaps=follower.gaps, ops=dict(workload.ops), failed_commands=dict(workload.failed),
        convergences=checker.convergences,
        objects_lost=sum(1 for v in violations if v.kind == "lost"),
        recoveries={f"{f.kind} {f.victim} @{f.at - injector.faults[0].at:.0f}s": f.recovery
                    for f in injector.faults if f.error is None},
        service_recoveries={(f"{f.kind} {f.victim} @{f.at - injector.faults[0].at:.0f}s",
                             svc): t for f in injector.faults if f.error is None
                            for svc, t in f.service_recovery.items()},
        stale_stopped={f"{f.kind} {f.victim} @{f.at - injector.faults[0].at:.0f}s":
                       f.stale_stopped for f in injector.faults
                       if f.stale_stopped is not None},
        shown_before_heal={f"{f.kind} {f.victim} @{f.at - injector.faults[0].at:.0f}s":
                           f.shown_before_heal for f in injector.faults
                           if f.shown_before_heal is not None},
        slow_recoveries=[f"{f.kind} {f.victim} @{f.at - injector.faults[0].at:.0f}s: "
                         f"{f.recovery if f.recovery is None else round(f.recovery, 1)} s, "
                         f"last waiting on {', '.join(f.waited_on)}"
                         for f in injector.faults if f.recovery is None or f.recovery > 10],
        netns=netns, kinds=kinds, hold=hold, etcd_quota=etcd_quota,
        writable_after={f"{f.kind} {f.victim} @{f.at - injector.faults[0].at:.0f}s":
                        f.writable_after for f in injector.faults if f.kind == "etcd-full"},
        process_nodes=process_nodes,
        clock_jumps=[f"{f.victim} {f.offset:+.0f} s" for f in injector.faults
                     if f.offset is not None],
        netem_delay=cluster.underlay.delay_applied if cluster.underlay is not None else None)
