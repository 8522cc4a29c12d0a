"""The hop task status gained: a node's report -> the fold controller -> Task.status.

Agents no longer write Tasks (a worker's etcd user cannot); they put a report under
``<p>/reports/<node>/`` and the fold controller copies it into the Task. This measures
what that costs, against a fresh etcd and a controller-manager running only ``fold``
(its own OS process, as in production):

* latency: one report at a time, ``--samples`` times: from the report's put returning
  to the Task's watch event carrying the new state (median, p90, max);
* throughput: ``--tasks`` reports put at once (127 per transaction, as the agent's
  status writer sends them) -> every Task says so (reports folded per second).

    python bench/fold.py [--samples 200] [--tasks 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import load_average, say
from shoal.crds import kinds, resource
from shoal.store import client, etcd, etcd_server, projections

REG = kinds.Registry.builtin()
TASKS = REG.lookup("tasks")
NODE = "n1"


def _task(i: int) -> resource.Resource:
    obj = resource.new("Task", f"web-{i:06d}", "bench", spec={
        "serviceName": "web", "slot": i + 1, "nodeName": NODE, "desiredState": "running",
        "template": {"image": "shoal/busybox", "command": ["httpd", "-f"]}},
        labels={"shoal.io/service": "web"})
    obj.status = {"state": "assigned", "message": "scheduled"}
    return obj


async def _create(store: client.Store, first: int, count: int) -> list[resource.Resource]:
    out: list[resource.Resource] = []
    for s in range(first, first + count, 127):
        made = await store.commit([client.Op("create", TASKS, _task(i))
                                   for i in range(s, min(s + 127, first + count))])
        out.extend(m for m in made if m is not None)
    return out


def _report(store: client.Store, task: resource.Resource, state: str) -> etcd.Op:
    key = projections.report_key(store.prefix, NODE, "bench", task.name)
    value = projections.encode_report(task.metadata.uid, {
        "state": state, "message": state, "timestamp": resource.now_rfc3339()})
    return etcd.op_put(key, value)


async def _until(store: client.Store, since: int, names: set[bytes], needle: bytes,
                 timeout: float) -> float:
    """Monotonic time at which every task in ``names`` (keys) carried ``needle``."""
    left = set(names)
    async with asyncio.timeout(timeout):
        async for _, events in store.raw_watch(store.kind_prefix(TASKS), since + 1):
            for ev in events:
                if ev.key in left and needle in ev.value:
                    left.discard(ev.key)
            if not left:
                return time.monotonic()
    raise AssertionError("unreachable")


def _start_manager(url: str, log: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal.cli", "controller-manager", "--etcd", url,
             "--prefix", "/bench", "--controllers", "fold"], stdout=fh, stderr=fh)


async def run(args: argparse.Namespace) -> None:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="shoal-bench-fold-"))
    server = etcd_server.EtcdServer(tmp / "etcd" / "data")
    server.start()
    store = await client.Store.connect(server.url, "/bench")
    manager = _start_manager(server.url, tmp / "manager.log")
    say(f"fold bench: {args.samples} single reports, then {args.tasks:,} at once; "
        f"load average {load_average()}; logs in {tmp}")
    try:
        singles = await _create(store, 0, args.samples)
        await asyncio.sleep(2.0)  # leader elected, task informer synced
        lat: list[float] = []
        for task in singles:
            key = store.key(TASKS, task.name, "bench")
            since = await store.etcd.current_revision()
            waiter = asyncio.create_task(_until(store, since, {key}, b'"state":"running"', 30))
            await asyncio.sleep(0)
            await store.etcd.txn([], [_report(store, task, "running")])
            sent = time.monotonic()
            lat.append(await waiter - sent)
        lat.sort()
        say(f"latency, report put -> Task.status: median {statistics.median(lat) * 1000:.1f} "
            f"ms, p90 {lat[int(len(lat) * 0.9)] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms "
            f"({len(lat)} samples)")

        bulk = await _create(store, args.samples, args.tasks)
        keys = {store.key(TASKS, t.name, "bench") for t in bulk}
        since = await store.etcd.current_revision()
        waiter = asyncio.create_task(_until(store, since, keys, b'"state":"running"', 600))
        await asyncio.sleep(0)
        t0 = time.monotonic()
        sem = asyncio.Semaphore(8)

        async def put(chunk: list[resource.Resource]) -> None:
            async with sem:
                await store.etcd.txn([], [_report(store, t, "running") for t in chunk])

        await asyncio.gather(*(put(bulk[i:i + 127]) for i in range(0, len(bulk), 127)))
        written = time.monotonic() - t0
        done = await waiter - t0
        say(f"throughput: {args.tasks:,} reports put in {written:.2f} s; all folded "
            f"{done:.2f} s after the first put ({args.tasks / done:,.0f} tasks/s); "
            f"load average {load_average()}")
    finally:
        manager.terminate()
        manager.wait(10)
        await store.close()
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--tasks", type=int, default=20_000)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
