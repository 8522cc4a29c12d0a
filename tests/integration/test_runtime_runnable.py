"""Elected runnables (``shoal/runtime/runnable.py``) on a real etcd, through the manager:
only the leader runs the body, a second manager is a hot standby, losing the lease
cancels the body and fences its writes, a failing body is restarted with backoff, and
every line it logs names it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
from collections.abc import AsyncIterator

import pytest
import structlog

from shoal.crds import kinds, resource
from shoal.runtime import leader, manager, runnable
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors, etcd_server
from tests.helpers import eventually

CONFIG = kinds.Registry.builtin().by_kind("Config")
TTL = 2.0


@contextlib.asynccontextmanager
async def running(store: client.Store, spec: runnable.RunnableSpec,
                  identity: str) -> AsyncIterator[asyncio.Task[None]]:
    """A manager running only ``spec``, as ``identity``; cancelled (cleanly) on exit."""
    task = asyncio.create_task(manager.run_controllers(store, [spec], identity,
                                                       lease_ttl=TTL))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def holder(store: client.Store, name: str) -> tuple[str, int] | None:
    kv = await store.raw_get(store.raw_key(*leader.LEASES, name))
    return (kv.value.decode(), kv.lease) if kv is not None else None


async def check(ok: bool) -> bool:
    return ok


class Recorder:
    """A body that records who runs it, and never runs twice at once."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.starts: list[str] = []
        self.overlap = False
        self.contexts: list[runnable.RunContext] = []

    def spec(self, identity: str) -> runnable.RunnableSpec:
        async def body(ctx: runnable.RunContext) -> None:
            self.overlap |= bool(self.running)
            self.running.add(identity)
            self.starts.append(identity)
            self.contexts.append(ctx)
            try:
                await ctx.store.create(CONFIG, resource.new(
                    "Config", f"run-{len(self.starts)}", "default", {"data": identity}))
                await asyncio.Event().wait()
            finally:
                self.running.discard(identity)
        return runnable.RunnableSpec(name="recorder", run=body)


async def test_only_the_leader_runs_it_and_a_standby_takes_over(
        store: client.Store, etcd: etcd_server.EtcdServer, prefix: str) -> None:
    rec = Recorder()
    other = await client.Store.connect(etcd.url, prefix=prefix)
    try:
        async with running(store, rec.spec("a"), "a") as first:
            await eventually(lambda: check(rec.running == {"a"}), timeout=5,
                             what="the first manager runs the body")
            async with running(other, rec.spec("b"), "b"):
                await asyncio.sleep(1.0)  # the standby campaigns meanwhile...
                assert rec.running == {"a"} and rec.starts == ["a"]  # ...and waits
                assert (await holder(store, "recorder") or ("", 0))[0] == "a"
                first.cancel()  # a clean stop revokes the lease: no TTL wait
                with contextlib.suppress(asyncio.CancelledError):
                    await first
                await eventually(lambda: check(rec.running == {"b"}), timeout=2,
                                 what="the standby runs the body")
                assert (await holder(store, "recorder") or ("", 0))[0] == "b"
                assert (await store.get(CONFIG, "run-2", "default")).spec["data"] == "b"
    finally:
        await other.close()
    assert not rec.overlap, "the body ran in two managers at once"


async def test_losing_the_lease_cancels_the_body_and_fences_its_writes(
        store: client.Store) -> None:
    rec = Recorder()
    async with running(store, rec.spec("a"), "a"):
        await eventually(lambda: check(len(rec.contexts) == 1), timeout=5)
        ctx = rec.contexts[0]
        assert ctx.fence is not None and isinstance(ctx.store, client.Store)
        held = await holder(store, "recorder")
        assert held is not None and held[1] == ctx.fence.lease
        # Someone else takes the key (as a new leader would after our lease expired).
        assert await store.raw_delete_if_lease(ctx.fence.key, ctx.fence.lease)
        await eventually(lambda: check(len(rec.starts) >= 2 or not rec.running),
                         timeout=3, what="the body cancelled")
        # The old term's store is refused by etcd itself from now on.
        stale = resource.new("Config", "stale", "default", {"data": "x"})
        with pytest.raises(errors.FencedError):
            await ctx.store.create(CONFIG, stale)
        # Campaigning goes on: this manager wins again, with a new fence.
        await eventually(lambda: check(len(rec.contexts) == 2), timeout=5,
                         what="a new term")
        assert rec.contexts[1].fence != ctx.fence
        await rec.contexts[1].store.create(CONFIG, stale)


async def test_a_failing_body_is_restarted_with_backoff_and_logs_its_name(
        store: client.Store) -> None:
    out = io.StringIO()
    rt_logging.configure("debug", json=True, stream=out)
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def flaky(ctx: runnable.RunContext) -> None:
        starts.append(loop.time())
        structlog.get_logger("user.code").info("from any logger")
        if len(starts) < 3:
            raise ValueError(f"failure {len(starts)}")
        await asyncio.Event().wait()

    spec = runnable.RunnableSpec(name="flaky", run=flaky)
    try:
        async with running(store, spec, "a"):
            await eventually(lambda: check(len(starts) == 3), timeout=5,
                             what="restarted twice")
            lease = (await holder(store, "flaky") or ("", 0))[1]
            await asyncio.sleep(0.5)
            assert len(starts) == 3  # healthy now: left running
            # Restarted within the term: leadership was not handed back.
            assert (await holder(store, "flaky") or ("", 0))[1] == lease
    finally:
        structlog.reset_defaults()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= runnable.RESTART_DELAY * 0.9 and gaps[1] >= gaps[0] * 1.5, gaps
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    # The elector's own lines (campaigning, outside the body) are not the runnable's.
    mine = [r for r in lines if r.get("component") != "shoal.runtime.leader" and (
        r.get("controller") == "flaky" or r["event"] in (
            "from any logger", "runnable failed; restarting with backoff"))]
    assert {r["event"] for r in mine} >= {"runnable started", "from any logger",
                                          "runnable failed; restarting with backoff"}
    for r in mine:
        assert r["controller"] == "flaky" and r["key"] == "flaky", r
    failed = next(r for r in mine if r["event"].startswith("runnable failed"))
    assert "ValueError" in json.dumps(failed["exception"])
