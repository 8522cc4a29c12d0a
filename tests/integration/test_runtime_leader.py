"""Leader election on an etcd lease: hand-over between OS processes, fencing, resigning."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.crds import kinds, resource
from shoal.runtime import leader, status
from shoal.store import client, errors, etcd_server
from tests.helpers import eventually

CONFIG = kinds.Registry.builtin().by_kind("Config")
TTL = 3.0

# A controller-manager process with one leader-elected controller that stamps the
# identity of whoever reconciled each Config into its status.
CHILD = """
import asyncio, sys
from shoal.runtime import manager, reconcile
from shoal.store import client

async def stamp(ctx, key):
    obj = ctx.get()
    if obj is not None:
        await ctx.update_status(obj, patch={"handledBy": sys.argv[3]})

async def main(url, prefix, identity):
    store = await client.Store.connect(url, prefix=prefix)
    spec = reconcile.ControllerSpec(name="stamper", kind="configs", reconcile=stamp)
    await manager.run_controllers(store, [spec], identity, lease_ttl=TTL_VALUE)

asyncio.run(main(*sys.argv[1:]))
""".replace("TTL_VALUE", str(TTL))


@pytest.fixture
def children(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path,
             ) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for identity in ("alpha", "beta"):
        with open(tmp_path / f"{identity}.log", "wb") as log:
            procs[identity] = subprocess.Popen(
                [sys.executable, "-c", CHILD, etcd.url, prefix, identity],
                stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    yield procs
    for identity, proc in procs.items():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        # Shown by pytest only when the test failed.
        print(f"---- {identity} ----\n" + (tmp_path / f"{identity}.log").read_text()[-3000:])


async def handled_by(store: client.Store, name: str) -> str | None:
    try:
        return (await store.get(CONFIG, name)).status.get("handledBy")
    except errors.NotFoundError:
        return None


async def test_follower_process_takes_over_when_the_leader_is_killed(
        store: client.Store, children: dict[str, subprocess.Popen[bytes]]) -> None:
    lock = store.raw_key("leases", "controllers", "stamper")

    async def holder() -> tuple[str, int] | None:
        kv = await store.raw_get(lock)
        return (kv.value.decode(), kv.lease) if kv is not None else None

    elected = await eventually(holder, timeout=15, what="a leader elected")
    assert elected is not None
    first, first_lease = elected
    other = "beta" if first == "alpha" else "alpha"
    await store.create(CONFIG, resource.new("Config", "one", "default", {"data": "1"}))
    assert await eventually(lambda: handled_by(store, "one"), timeout=10) == first

    # Make sure the follower is up and campaigning before the leader dies.
    await eventually(lambda: _true(children[other].poll() is None), timeout=5)
    children[first].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    children[first].wait()

    async def taken_over() -> bool:
        h = await holder()
        return h is not None and h[0] == other
    await eventually(taken_over, timeout=TTL + 3, interval=0.02, what="follower took over")
    elapsed = time.monotonic() - killed_at
    print(f"take-over {elapsed:.2f}s after SIGKILL (TTL {TTL}s)")
    assert elapsed <= TTL + 1, f"take-over took {elapsed:.2f}s (TTL {TTL}s)"

    # The new leader does the work...
    await store.create(CONFIG, resource.new("Config", "two", "default", {"data": "2"}))
    assert await eventually(lambda: handled_by(store, "two"), timeout=10) == other
    # ...and whatever the dead leader still had in flight is refused by the fence.
    stale = await store.get(CONFIG, "two")
    stale.status["handledBy"] = first
    with pytest.raises(errors.FencedError):
        await store.update(CONFIG, stale, fence=client.Fence(lock, first_lease))
    new_lease = (await holder())[1]  # type: ignore[index]
    await store.update(CONFIG, stale, fence=client.Fence(lock, new_lease))

    # Each hand-over is an Event on the controller's Lease (what `get events -w` shows).
    async def announced() -> set[str]:
        found = await status.list_events(store, resource.new("Lease", "stamper"))
        got = {str(e.spec.get("message")) for e in found
               if e.spec.get("reason") == "LeaderElection"}
        return got if f"{other} became leader" in got else set()
    assert f"{first} became leader" in await eventually(announced, timeout=10,
                                                       what="hand-over events")


async def _true(value: bool) -> bool:
    return value


async def test_resigning_hands_over_at_once_and_a_lost_key_stops_the_work(
        store: client.Store) -> None:
    started: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    stopped: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    fences: dict[str, client.Fence] = {}

    def work_for(name: str) -> leader.Work:
        async def work(fence: client.Fence) -> None:
            fences[name] = fence
            started[name].set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped[name].set()
        return work

    a = leader.LeaderElector(store, "resign", "a", ttl=TTL)
    b = leader.LeaderElector(store, "resign", "b", ttl=TTL)
    task_a = asyncio.create_task(a.run(work_for("a")))
    await asyncio.wait_for(started["a"].wait(), 5)
    assert a.is_leader and a.fence == fences["a"]
    assert await a.leader_identity() == "a"
    task_b = asyncio.create_task(b.run(work_for("b")))
    try:
        # Cancelling the leader (clean shutdown) revokes its lease: no TTL wait.
        t0 = time.monotonic()
        task_a.cancel()
        await asyncio.gather(task_a, return_exceptions=True)
        assert stopped["a"].is_set() and not a.is_leader
        await asyncio.wait_for(started["b"].wait(), 2)
        assert time.monotonic() - t0 < 1.5

        # Someone deletes the lock key under the leader: its work stops immediately and
        # its fence is dead even before its lease would expire.
        first_term = fences["b"]
        t0 = time.monotonic()
        await store.etcd.delete_prefix(b.key)
        await asyncio.wait_for(stopped["b"].wait(), 2)
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(errors.FencedError):
            await store.create(CONFIG, resource.new("Config", "x", "default", {"data": "x"}),
                               fence=first_term)
        # And b campaigns again and wins a fresh term with a fresh fence.
        await eventually(lambda: _true(b.is_leader and b.fence != first_term), timeout=5)
    finally:
        task_b.cancel()
        await asyncio.gather(task_b, return_exceptions=True)


class _Unanswered(client.Store):
    """A real store whose lease keepalives reach etcd (the lease is refreshed) while
    ``mute`` is set, but whose answers are lost: an etcd leader election, as the leader
    sees it."""

    mute = False

    async def keepalive(self, lease_id: int) -> int:
        ttl = await super().keepalive(lease_id)
        if self.mute:
            raise errors.UnavailableError(self.url, "unavailable: no leader")
        return ttl


async def test_unanswered_keepalives_stop_the_work_but_leadership_resumes_on_its_lease(
        etcd: etcd_server.EtcdServer, store: client.Store, prefix: str) -> None:
    muted = await _Unanswered.connect(etcd.url, prefix=prefix)
    starts: list[client.Fence] = []
    stops = 0

    async def work(fence: client.Fence) -> None:
        nonlocal stops
        starts.append(fence)
        try:
            await asyncio.Event().wait()
        finally:
            stops += 1

    async def standby_work(fence: client.Fence) -> None:
        raise AssertionError("the standby led while the leader's lease was alive")

    a = leader.LeaderElector(muted, "doubt", "a", ttl=2)
    b = leader.LeaderElector(store, "doubt", "b", ttl=2)
    task_a = asyncio.create_task(a.run(work))
    await eventually(lambda: _true(len(starts) == 1), timeout=5, what="a leading")
    task_b = asyncio.create_task(b.run(standby_work))
    try:
        muted.mute = True  # for longer than the TTL: a must stop its work, in doubt
        await eventually(lambda: _true(stops == 1), timeout=5, what="a's work stopped")
        muted.mute = False
        await eventually(lambda: _true(len(starts) == 2), timeout=5, what="a leading again")
        # Same lease, same fence: the key never changed hands and b never led.
        assert starts[1] == starts[0]
        assert await a.leader_identity() == "a" and not b.is_leader
        await store.create(CONFIG, resource.new("Config", "y", "default", {"data": "y"}),
                           fence=starts[1])
    finally:
        for task in (task_a, task_b):
            task.cancel()
        await asyncio.gather(task_a, task_b, return_exceptions=True)
        await muted.close()
    # A clean stop still revokes the lease: the key is gone at once.
    assert await store.raw_get(a.key) is None
