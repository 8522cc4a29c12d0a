"""A controller-manager SIGKILLed in the middle of its work, again and again: at no etcd
revision does any slot hold two tasks desired running, and after the last restart the
service converges with exactly one task per slot — no work lost, none duplicated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.crds import taskstates as ts
from shoal.store import client, etcd_server
from tests.helpers import eventually
from tests.integration.orchestration_support import TASKS, Cluster, describe


@pytest.fixture
async def cluster(etcd: etcd_server.EtcdServer, prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster.open(etcd.url, prefix, tmp_path) as c:
        yield c


class SlotAudit:
    """Follows every task write and checks the one-desired-running-task-per-slot rule at
    every revision (a transaction's writes share a revision and are judged together)."""

    def __init__(self, store: client.Store) -> None:
        self.store = store
        self.tasks: dict[bytes, dict[str, Any]] = {}
        self.revisions = 0
        self.writes = 0
        self.violations: list[str] = []
        self.worst = 0
        self._task: asyncio.Task[None] | None = None

    def _check(self, revision: int) -> None:
        per_slot: dict[tuple[str, int], list[str]] = {}
        for data in self.tasks.values():
            spec = data.get("spec") or {}
            desired = spec.get("desiredState") or "running"
            if ts.RANK.get(desired, ts.RUNNING_RANK) > ts.RUNNING_RANK:
                continue
            key = (str(spec.get("serviceName")), int(spec.get("slot") or 0))
            per_slot.setdefault(key, []).append(data["metadata"]["name"])
        self.revisions += 1
        for key, names in per_slot.items():
            self.worst = max(self.worst, len(names))
            if len(names) > 1:
                self.violations.append(f"revision {revision}: slot {key} has {names}")

    async def _follow(self, start: int) -> None:
        prefix = self.store.kind_prefix(TASKS)
        current = start
        async for _, events in self.store.raw_watch(prefix, start + 1):
            for ev in events:
                if ev.mod_revision != current:
                    self._check(current)
                    current = ev.mod_revision
                self.writes += 1
                if ev.deleted:
                    self.tasks.pop(ev.key, None)
                else:
                    self.tasks[ev.key] = json.loads(ev.value)
            self._check(current)

    async def start(self) -> None:
        _, revision = await self.store.raw_list(self.store.kind_prefix(TASKS))
        self._task = asyncio.create_task(self._follow(revision))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def kill_mid_change(cluster: Cluster, audit: SlotAudit,
                          change: Callable[[], Awaitable[None]], name: str) -> None:
    """Make ``change``, SIGKILL the manager as soon as it has started acting on it (its
    first task write), then start a fresh manager."""
    manager = next(p for p in reversed(cluster.procs) if p.name.startswith("manager"))
    before = audit.writes
    await change()
    await eventually(lambda: _true(audit.writes > before), 20, interval=0.002,
                     what=f"first task write after {name}")
    manager.signal(signal.SIGKILL)
    await manager.wait()
    cluster.start_manager(f"manager-{name}")


async def _true(value: bool) -> bool:
    return value


async def test_manager_killed_mid_reconcile_never_doubles_a_slot(cluster: Cluster) -> None:
    cluster.start_agent("c", count=4)
    audit = SlotAudit(cluster.store)
    await audit.start()
    cluster.start_manager()
    await cluster.wait_ready(cluster.node_names("c", 4))
    try:
        await kill_mid_change(cluster, audit, lambda: cluster.apply(
            "web", {"replicas": 400, "template": {"image": "busybox"}}), "create")
        assert await cluster.wait_running("web", 400, timeout=40)
        # Every slot on c-0 moves: a shutdown and a create per slot, 200 writes in two
        # transactions in flight together, killed part-way.
        await kill_mid_change(cluster, audit, lambda: cluster.set_availability("c-0", "drain"),
                              "drain")
        per_node = await cluster.wait_running("web", 400, timeout=40, avoid=["c-0"])
        assert "c-0" not in per_node, per_node
        await kill_mid_change(cluster, audit, lambda: cluster.scale("web", 150), "scale-down")
        await kill_mid_change(cluster, audit, lambda: cluster.scale("web", 300), "scale-up")
        per_node = await cluster.wait_running("web", 300, timeout=40)
    finally:
        await audit.stop()
    assert "c-0" not in per_node, per_node
    current = await cluster.current("web")
    # One task per slot (which slots survive a scale-down depends on the nodes' loads).
    slots = [ts.slot_of(t) for t in current]
    assert len(slots) == len(set(slots)) == 300 and min(slots) >= 1, describe(current)
    assert not audit.violations, audit.violations[:10]
    assert audit.worst == 1
    print(f"audited {audit.writes} task writes over {audit.revisions} revisions")
