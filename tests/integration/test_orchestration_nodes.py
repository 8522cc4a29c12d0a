"""Node lifecycle through the real controllers and hollow agent processes: global
services following nodes, drain and re-activate, an agent SIGKILLed (node down, its
replicas running elsewhere within TTL + 1 s) and coming back (its stale tasks stop)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.crds import taskstates as ts
from shoal.store import etcd_server
from tests.helpers import eventually
from tests.integration.cli_support import Swctl
from tests.integration.orchestration_support import NODES, TTL, Cluster, describe


@pytest.fixture
async def cluster(etcd: etcd_server.EtcdServer, prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster.open(etcd.url, prefix, tmp_path) as c:
        yield c


async def test_global_service_follows_nodes(cluster: Cluster) -> None:
    for name in ("g1", "g2"):
        cluster.start_agent(name, labels={"tier": "edge"})
    cluster.start_agent("g3", labels={"tier": "core"})
    cluster.start_manager()
    await cluster.wait_ready(["g1", "g2", "g3"])
    await cluster.apply("agent", {"mode": "global", "template": {"image": "busybox"}})
    await cluster.apply("edge", {"mode": "global", "template": {"image": "busybox"},
                                 "placement": {"constraints": ["node.labels.tier==edge"]}})
    assert await cluster.wait_running("agent", 3) == {"g1": 1, "g2": 1, "g3": 1}
    assert await cluster.wait_running("edge", 2) == {"g1": 1, "g2": 1}

    # A node joins: it gets its global task.
    cluster.start_agent("g4", labels={"tier": "edge"})
    assert await cluster.wait_running("agent", 4) == {"g1": 1, "g2": 1, "g3": 1, "g4": 1}
    assert await cluster.wait_running("edge", 3) == {"g1": 1, "g2": 1, "g4": 1}

    # Drained: its global tasks stop. Active again: they come back.
    await cluster.set_availability("g2", "drain")
    assert await cluster.wait_running("agent", 3) == {"g1": 1, "g3": 1, "g4": 1}
    assert await cluster.wait_running("edge", 2) == {"g1": 1, "g4": 1}
    await cluster.set_availability("g2", "active")
    assert await cluster.wait_running("edge", 3) == {"g1": 1, "g2": 1, "g4": 1}

    # Removed (agent stopped, node deleted): its tasks are stopped and forgotten.
    cluster.agents["g4"].signal(signal.SIGTERM)
    await cluster.agents["g4"].wait()
    await cluster.store.delete(NODES, "g4")
    assert await cluster.wait_running("agent", 3) == {"g1": 1, "g2": 1, "g3": 1}
    assert await cluster.wait_running("edge", 2) == {"g1": 1, "g2": 1}


async def test_drain_moves_replicas_and_activate_takes_new_ones(cluster: Cluster) -> None:
    cluster.start_agent("d", count=3)
    cluster.start_manager()
    names = cluster.node_names("d", 3)
    await cluster.wait_ready(names)
    await cluster.apply("web", {"replicas": 6, "template": {"image": "busybox"}})
    assert await cluster.wait_running("web", 6) == {"d-0": 2, "d-1": 2, "d-2": 2}

    await cluster.set_availability("d-0", "drain")
    per_node = await cluster.wait_running("web", 6, avoid=["d-0"])
    assert "d-0" not in per_node and sum(per_node.values()) == 6, per_node
    moved = [t for t in await cluster.tasks("web") if ts.node_name_of(t) == "d-0"]
    assert len(moved) == 2 and all(not ts.is_active_desired(t) for t in moved)

    # Pause: keeps what it has, takes nothing new.
    await cluster.set_availability("d-0", "active")
    await cluster.set_availability("d-1", "pause")
    await cluster.scale("web", 8)
    per_node = await cluster.wait_running("web", 8)
    # Nothing is rebalanced; the new replicas go to the emptiest active node (d-0).
    assert per_node == {"d-0": 2, "d-1": 3, "d-2": 3}, per_node


async def test_agent_killed_replicas_move_within_ttl_and_return_stops_stale_tasks(
        cluster: Cluster) -> None:
    for name in ("k1", "k2", "k3"):
        cluster.start_agent(name)
    cluster.start_manager()
    await cluster.wait_ready(["k1", "k2", "k3"])
    await cluster.apply("web", {"replicas": 6, "template": {"image": "busybox"}})
    assert await cluster.wait_running("web", 6) == {"k1": 2, "k2": 2, "k3": 2}
    victims = {t.name for t in await cluster.current("web") if ts.node_name_of(t) == "k1"}

    killed = time.monotonic()
    cluster.agents["k1"].signal(signal.SIGKILL)

    async def down() -> bool:
        return (await cluster.node("k1")).status.get("state") == "down"
    await eventually(down, TTL + 1.0, interval=0.02, what="k1 marked down")
    down_after = time.monotonic() - killed
    per_node = await cluster.wait_running("web", 6, timeout=TTL + 1.0, avoid=["k1"])
    moved_after = time.monotonic() - killed
    assert "k1" not in per_node and sum(per_node.values()) == 6, per_node
    assert moved_after <= TTL + 1.0, f"replicas running elsewhere after {moved_after:.2f}s"
    node = await cluster.node("k1")
    cond = next(c for c in node.status["conditions"] if c["type"] == "Ready")
    assert cond["status"] == "False" and cond["reason"] == "HeartbeatLost"
    assert "heartbeat lease expired" in node.status["message"]
    print(f"node down after {down_after:.2f}s, replicas running elsewhere after "
          f"{moved_after:.2f}s (lease TTL {TTL}s)")

    # The node comes back: ready again, and its old tasks are told to stop — and do.
    cluster.start_agent("k1")
    await cluster.wait_ready(["k1"])

    async def stale_stopped() -> bool:
        tasks = {t.name: t for t in await cluster.tasks("web")}
        return all(not ts.is_active_desired(tasks[name])
                   and tasks[name].status.get("state") == "shutdown"
                   for name in victims if name in tasks)
    await eventually(stale_stopped, 15, what="stale tasks on k1 shut down")
    assert sum((await cluster.running_per_node("web")).values()) == 6
    assert not any(ts.is_active_desired(t) for t in await cluster.tasks("web")
                   if ts.node_name_of(t) == "k1"), describe(await cluster.tasks("web"))


async def test_partitioned_node_shows_unknown_then_stops_its_replaced_tasks_on_return(
        cluster: Cluster) -> None:
    # A partition as the node sees it: the agent and its heartbeat child frozen
    # (SIGSTOP to the session), its tasks still there when it comes back.
    for name in ("p1", "p2"):
        cluster.start_agent(name)
    cluster.start_manager()
    await cluster.wait_ready(["p1", "p2"])
    await cluster.apply("web", {"replicas": 4, "template": {"image": "busybox"}})
    assert await cluster.wait_running("web", 4) == {"p1": 2, "p2": 2}
    cut_off = {t.name for t in await cluster.current("web") if ts.node_name_of(t) == "p1"}
    swctl = Swctl(cluster.etcd_url, cluster.prefix, cluster.workdir)

    os.killpg(cluster.agents["p1"].pid, signal.SIGSTOP)
    try:
        async def unknown() -> bool:
            tasks = {t.name: t for t in await cluster.tasks("web")}
            return all(ts.shown_state(tasks[n]) == ts.UNKNOWN for n in cut_off)
        await eventually(unknown, TTL + 5.0, what="p1's tasks shown unknown")
        await cluster.wait_running("web", 4, timeout=TTL + 5.0, avoid=["p1"])
        # What the user sees: `service ps` says Unknown (not Running) for p1's tasks,
        # `get tasks` says unknown with the reason, the node's going down is an Event.
        ps = (await asyncio.to_thread(swctl, "service", "ps", "web")).stdout
        rows = [line for line in ps.splitlines() if " p1 " in f" {line} "]
        assert len(rows) == 2 and all("Unknown" in r and "Running" not in r
                                      for r in rows), ps
        wide = (await asyncio.to_thread(swctl, "get", "tasks", "-o", "wide")).stdout
        for name in cut_off:
            row = next(line for line in wide.splitlines() if line.startswith(name))
            assert " unknown " in row and "node p1 is down" in row, row
        events = (await asyncio.to_thread(swctl, "get", "events")).stdout
        assert "NodeDown" in events and "p1" in events, events
    finally:
        os.killpg(cluster.agents["p1"].pid, signal.SIGCONT)

    # The node comes back: ready, then within 5 s its replaced tasks are stopped and
    # nothing is shown unknown any more.
    await cluster.wait_ready(["p1"], timeout=TTL + 10.0)
    back = time.monotonic()

    async def stopped() -> bool:
        tasks = {t.name: t for t in await cluster.tasks("web")}
        return all(ts.observed_state(tasks[n]) == ts.SHUTDOWN
                   and not ts.node_unreachable(tasks[n]) for n in cut_off if n in tasks)
    await eventually(stopped, 5.0, what="p1's replaced tasks stopped within 5 s of its return")
    print(f"replaced tasks stopped {time.monotonic() - back:.2f}s after p1 was ready again")
    assert sum((await cluster.running_per_node("web")).values()) == 4
    events = (await asyncio.to_thread(swctl, "get", "events")).stdout
    assert "NodeReady" in events, events
