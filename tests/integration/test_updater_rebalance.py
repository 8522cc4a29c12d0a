"""Rebalancing through the real controllers and hollow agent processes.

A service with ``placement.rebalance.enabled`` running 6 replicas on two nodes gets 2/2/2
when a third node joins, and an invariant recorder watching every etcd revision of its
tasks shows the moves were start-first: never fewer than 6 running, and no slot ever
held two tasks desired running except a move's replacement beside the task it replaces.
A service without rebalancing stays 3/3/0 (Swarm's behaviour) until
``swctl service rebalance`` evens it out; with rebalancing on, a drained node that is
activated again gets its share back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.controllers.updater import rebalance as rb
from shoal.store import client, etcd_server
from tests.helpers import eventually
from tests.integration.cli_support import Swctl
from tests.integration.orchestration_support import SERVICES, TASKS, Cluster, describe

ENABLED = {"rebalance": {"enabled": True}}


@pytest.fixture
async def cluster(etcd: etcd_server.EtcdServer, prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster.open(etcd.url, prefix, tmp_path) as c:
        yield c


@dataclasses.dataclass
class Recorder:
    """Every revision of one service's tasks, from an etcd watch: the lowest number of
    tasks running at once (after ``armed``), and every slot that held two tasks desired
    running that were not a move's replacement beside the task it replaces."""

    store: client.Store
    service: str
    armed: bool = False
    lowest: int | None = None
    bad: list[str] = dataclasses.field(default_factory=list)
    overlaps: int = 0

    def note(self, tasks: dict[bytes, dict[str, Any]]) -> None:
        mine = [t for t in tasks.values() if t["spec"].get("serviceName") == self.service]
        per_slot: dict[int, list[dict[str, Any]]] = {}
        serving = 0
        for t in mine:
            if t["spec"].get("desiredState") != "running":
                continue
            serving += (t.get("status") or {}).get("state") == "running"
            per_slot.setdefault(t["spec"]["slot"], []).append(t)
        if self.armed:
            self.lowest = serving if self.lowest is None else min(self.lowest, serving)
        for slot, same in per_slot.items():
            if len(same) < 2:
                continue
            self.overlaps += 1
            moved = [t for t in same
                     if rb.MOVED_FROM in (t["metadata"].get("annotations") or {})]
            old = [t for t in same if t not in moved]
            if not (len(same) == 2 and len(moved) == 1 and len(old) == 1
                    and (old[0].get("status") or {}).get("state") == "running"):
                self.bad.append(f"slot {slot}: " + ", ".join(
                    f"{t['metadata']['name']}@{t['spec'].get('nodeName')}"
                    f"({(t.get('status') or {}).get('state')})" for t in same))

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Recorder]:
        prefix = self.store.kind_prefix(TASKS, "default")
        kvs, rev = await self.store.raw_list(prefix)
        tasks = {kv.key: json.loads(kv.value) for kv in kvs}
        self.note(tasks)

        async def follow() -> None:
            async for _, events in self.store.raw_watch(prefix, rev + 1):
                for ev in events:
                    if ev.deleted:
                        tasks.pop(ev.key, None)
                    else:
                        tasks[ev.key] = json.loads(ev.value)
                if events:
                    self.note(tasks)
        watch = asyncio.create_task(follow())
        try:
            yield self
        finally:
            if watch.done():
                watch.result()  # a broken watch fails the test rather than passing it
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


async def spread(cluster: Cluster, service: str, want: dict[str, int],
                 timeout: float = 40.0) -> None:
    """Until the service runs exactly ``want`` tasks per node, all of them running."""
    total = sum(want.values())

    async def probe() -> bool:
        current = await cluster.current(service)
        return (len(current) == total and cluster.per_node(current) == want)
    try:
        await eventually(probe, timeout, what=f"{service} spread {want}")
    except AssertionError:
        print(describe(await cluster.tasks(service)))
        raise


async def test_a_joining_node_gets_its_share_start_first(cluster: Cluster) -> None:
    cluster.start_agent("a")
    cluster.start_agent("b")
    cluster.start_manager()
    await cluster.wait_ready(["a", "b"])
    await cluster.apply("web", {"replicas": 6, "template": {"image": "busybox"},
                                "placement": ENABLED})
    await cluster.apply("plain", {"replicas": 6, "template": {"image": "busybox"}})
    assert await cluster.wait_running("web", 6) == {"a": 3, "b": 3}
    assert await cluster.wait_running("plain", 6) == {"a": 3, "b": 3}

    recorder = Recorder(cluster.store, "web", armed=True)
    async with recorder.watching():
        cluster.start_agent("c")
        await spread(cluster, "web", {"a": 2, "b": 2, "c": 2})
    assert recorder.lowest is not None and recorder.lowest >= 6, recorder.lowest
    assert recorder.bad == [], recorder.bad
    assert recorder.overlaps >= 2  # the moves were start-first overlaps
    moved = [t for t in await cluster.tasks("web")
             if rb.MOVED_FROM in t.metadata.annotations]
    assert sorted(t.metadata.annotations[rb.MOVED_FROM] for t in moved) == ["a", "b"]
    svc = await cluster.store.get(SERVICES, "web")
    assert svc.status["rebalance"]["moves"] == 2

    # Swarm's behaviour without rebalancing: the new node stayed empty all along (web's
    # moves took seconds, in which plain's could have happened too).
    assert await cluster.wait_running("plain", 6) == {"a": 3, "b": 3}

    # ... until asked, once: swctl service rebalance plain.
    swctl = Swctl(cluster.etcd_url, cluster.prefix, cluster.workdir)
    out = await asyncio.to_thread(swctl, "service", "rebalance", "plain", timeout=90)
    lines = out.stdout.splitlines()
    assert lines[0] == "plain"
    assert sorted(lines[1:-1]) == sorted(
        f"moved plain.{t.spec['slot']} from {t.metadata.annotations[rb.MOVED_FROM]} to c"
        for t in await cluster.tasks("plain") if rb.MOVED_FROM in t.metadata.annotations)
    assert len(lines) == 4, lines
    assert lines[-1] == "verify: spread a 2, b 2, c 2 (maxSkew 1)"
    assert await cluster.wait_running("plain", 6) == {"a": 2, "b": 2, "c": 2}
    plain = await cluster.store.get(SERVICES, "plain")
    assert plain.status["rebalance"]["handled"] == plain.metadata.annotations[rb.REQUEST]
    # An annotation, not a spec change: no new generation, no revision, nothing dirty.
    assert "placement" not in plain.spec and plain.metadata.generation == 1
    assert [r["revision"] for r in plain.status["revisions"]] == [1]


async def test_drain_then_activate_brings_the_share_back(cluster: Cluster) -> None:
    cluster.start_agent("d", count=3)
    cluster.start_manager()
    names = cluster.node_names("d", 3)
    await cluster.wait_ready(names)
    await cluster.apply("web", {"replicas": 6, "template": {"image": "busybox"},
                                "placement": ENABLED})
    assert await cluster.wait_running("web", 6) == {"d-0": 2, "d-1": 2, "d-2": 2}

    await cluster.set_availability("d-0", "drain")
    await spread(cluster, "web", {"d-1": 3, "d-2": 3})
    recorder = Recorder(cluster.store, "web", armed=True)
    async with recorder.watching():
        await cluster.set_availability("d-0", "active")
        await spread(cluster, "web", {"d-0": 2, "d-1": 2, "d-2": 2})
    assert recorder.lowest is not None and recorder.lowest >= 6, recorder.lowest
    assert recorder.bad == [], recorder.bad
