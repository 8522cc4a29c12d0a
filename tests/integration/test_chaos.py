"""The short chaos run (issue 16): a busy 3-manager cluster under a fixed seed's faults
keeps every invariant and converges.

Real parts throughout (bench/chaoslib): 3 etcd members serving mutual TLS, 3 ``swctl
controller-manager`` processes, one process-runtime agent running its tasks as real
processes and 2 hollow agents with state journals; a workload of ``swctl`` applies,
scales, rolling updates, drains and a stack deploy while controller-managers, agents,
heartbeat children and etcd members are SIGKILLed and SIGSTOPped, and agents' and
controller-managers' wall clocks stepped (libfaketime), at random (seed 16). One watch
checks every etcd revision. What a user would notice: a slot running twice, fewer tasks
than the update rules allow, a task state going backwards, a service lost or
resurrected, a node running what etcd says it does not, or a service that does not come
back to its spec once the faults stop. The partition case runs each agent in its own
network namespace (``--netns``) and cuts one node's link for longer than the heartbeat
TTL: its tasks must show ``unknown`` meanwhile, and the tasks replaced while it was away
must be stopped within 5 s of its return. The etcd-full case fills etcd (64 MiB quota) to
its NOSPACE alarm for a few seconds: nothing may be lost, and the controller-managers must
get etcd writable again by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench.chaoslib import hosts
from bench.chaoslib.clocks import Clocks
from bench.chaoslib.faults import CLOCK_KINDS, KINDS
from bench.chaoslib.invariants import Checker
from bench.chaoslib.run import run
from bench.chaoslib.watcher import Follower
from shoal.store import client, etcd_server
from tests.e2e.netlab import have_netns_privileges
from tests.helpers import eventually, eventually_sync

SEED = 16
#: Generous for CI's 2 loaded cores; the bench records the real figures.
CONVERGE_BOUND = 60.0


@pytest.mark.timeout(600)
async def test_chaos_short_run_keeps_every_invariant(tmp_path: Path) -> None:
    # One of the 3 nodes runs real processes (`--runtime process`), whose pids the host
    # check reads from /proc; agents and controller-managers run under libfaketime, and
    # clock-jump faults step one's wall clock by 5 min to 2 h either way.
    result = await run(tmp_path, SEED, duration=100, nodes=3, settle=CONVERGE_BOUND,
                       kinds=(*KINDS, *CLOCK_KINDS), process_nodes=1, clocks=True)
    report = "\n".join(result.lines())
    print(report)
    assert result.process_nodes == 1 and result.clock_jumps, report
    assert result.total_faults >= 15, report
    assert len(result.faults) >= 5, report  # mixed kinds, not one kind over and over
    assert not result.fault_errors, report
    assert result.violations == [], report
    assert result.unconverged == [], report
    assert max(result.convergence.values()) <= CONVERGE_BOUND, report
    assert result.gaps == [], report


@pytest.mark.timeout(300)
@pytest.mark.skipif(not have_netns_privileges(), reason="needs root for network namespaces")
async def test_a_partitioned_node_shows_unknown_and_stops_its_replaced_tasks_on_return(
        tmp_path: Path) -> None:
    # One partition of 9 s (TTL 3 s) while the workload runs: the node is marked down, its
    # tasks are replaced elsewhere, and on return it must stop the ones replaced.
    result = await run(tmp_path, SEED, duration=15, nodes=3, settle=CONVERGE_BOUND,
                       stack=False, kinds=("partition",), max_faults=1, hold=(9.0, 9.0),
                       netns=True)
    report = "\n".join(result.lines())
    print(report)
    assert result.faults == {"partition": 1}, report
    assert not result.fault_errors, report
    assert result.violations == [], report
    assert result.unconverged == [], report
    [shown] = result.shown_before_heal.values()
    assert shown and set(shown.values()) == {"unknown"}, shown
    [stopped] = result.stale_stopped.values()
    assert stopped <= 5.0, report
    assert not [ns for ns in os.listdir("/var/run/netns")
                if ns.startswith(f"shc{os.getpid():x}-")], "the run left its namespaces behind"


@pytest.mark.timeout(300)
async def test_a_full_etcd_is_recovered_by_the_managers_and_keeps_every_invariant(
        tmp_path: Path) -> None:
    # One etcd-full of 8 s on members with a 64 MiB quota while the workload runs: its
    # writes are refused meanwhile (counted, retried), nothing is lost, and once the
    # junk is deleted the managers' maintenance loop gets etcd writable again by itself.
    result = await run(tmp_path, SEED, duration=20, nodes=3, settle=CONVERGE_BOUND,
                       stack=False, kinds=("etcd-full",), max_faults=1, hold=(8.0, 8.0),
                       etcd_quota=64 * 1024 * 1024)
    report = "\n".join(result.lines())
    print(report)
    assert result.faults == {"etcd-full": 1}, report
    assert not result.fault_errors, report
    assert result.violations == [], report
    assert result.unconverged == [], report
    [recovery] = result.recoveries.values()
    assert recovery is not None and recovery <= CONVERGE_BOUND, report


async def test_the_watch_reports_a_slot_run_twice_at_the_revision_that_did_it(
        etcd: etcd_server.EtcdServer) -> None:
    # The checker is only worth its zero if it sees what it looks for: two tasks written
    # into one slot of a real etcd are reported with both keys and the write's revision.
    prefix = f"/chaos-{uuid.uuid4().hex[:8]}"
    store = await client.Store.connect(etcd.url, prefix)
    checker = Checker(store.raw_key("registry").decode() + "/")
    follower = Follower([etcd.url], prefix, None, checker)
    await follower.start()
    following = asyncio.create_task(follower.run())
    try:
        def put(path: str, obj: dict[str, object]) -> asyncio.Future[int]:
            return asyncio.ensure_future(store.raw_put(store.raw_key("registry", *path.split(
                "/")), json.dumps(obj).encode()))

        template = {"image": "busybox"}
        await put("services/default/web", {"metadata": {"name": "web", "uid": "s"},
                                           "spec": {"replicas": 1, "template": template}})
        for name in ("web.1.1", "web.1.2"):
            rev = await put(f"tasks/default/{name}", {
                "metadata": {"name": name, "uid": name},
                "spec": {"serviceName": "web", "slot": 1, "template": template},
                "status": {"state": "running"}})

        async def reported() -> bool:
            return any(v.kind == "slot" for v in checker.violations)
        await eventually(reported, what="the slot violation")
        [v] = checker.violations
        assert v.revision == rev
        assert [k.rsplit("/", 1)[1] for k in v.keys] == ["web.1.1", "web.1.2"]
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await store.close()


def test_a_process_nodes_host_view_follows_its_real_processes(tmp_path: Path) -> None:
    # What the settled host check sees of a process-runtime node: a task whose recorded
    # pid runs, until it is killed; and a supervisor shim still running after its task's
    # files were removed (a leak the files alone would hide), found by its command line.
    node_dir = tmp_path / "process" / "cp0-1"
    node_dir.mkdir(parents=True)
    task_proc = subprocess.Popen(["sleep", "60"])
    shim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "/x/shoal/agent/process/shim.py", str(node_dir), "uid-b"])
    try:
        stat = Path(f"/proc/{task_proc.pid}/stat").read_text()
        start = int(stat[stat.rindex(")") + 2:].split()[19])
        (node_dir / "uid-a.json").write_text(json.dumps({"pid": task_proc.pid,
                                                         "starttime": start}))
        (node_dir / "uid-a.spec.json").write_text("{}")
        host = hosts.ProcessHost(node_dir)

        def seen() -> list[str]:
            return sorted(host.running())
        eventually_sync(lambda: seen() == ["uid-a", "uid-b"], what="the task and the orphan shim")
        assert "files removed" in host.running()["uid-b"]["name"]
        task_proc.kill()
        task_proc.wait()
        assert seen() == ["uid-b"]  # its pid is gone (or reused: the start time differs)
        host.kill_all()
        shim.wait(10)
        assert seen() == []
    finally:
        for proc in (task_proc, shim):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_clock_jump_steps_one_processs_wall_clock_and_leaves_its_sleeps_working(
        tmp_path: Path) -> None:
    # What the clock-jump fault relies on: a Python process under the harness's
    # libfaketime setup sees its wall clock stepped (and back) while it runs, its
    # monotonic clock does not move, and time.sleep — which libfaketime 0.9.10 breaks
    # when monotonic clocks are left alone — still works (the preloaded shim).
    clocks = Clocks(tmp_path)
    probe = ("import sys, time\n"
             "for line in sys.stdin:\n"
             "    time.sleep(0.01)\n"
             "    print(round(time.time() - float(line)), time.monotonic(), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", probe], env={**os.environ,
                            **clocks.env("cm-0")}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        def offset() -> tuple[int, float]:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{time.time()}\n")
            proc.stdin.flush()
            seen, mono = proc.stdout.readline().split()
            return int(seen), float(mono)

        first, mono0 = offset()
        assert first == 0
        clocks.set("cm-0", -3600)
        stepped = eventually_sync(lambda: offset()[0] == -3600 or None, timeout=5,
                                  what="the wall clock stepped back an hour")
        assert stepped
        _, mono1 = offset()
        assert 0 <= mono1 - mono0 < 10  # monotonic: untouched
        clocks.set("cm-0", 0)
        eventually_sync(lambda: offset()[0] == 0 or None, timeout=5, what="put back")
    finally:
        proc.kill()
        proc.wait()
