"""Scheduling through the real controllers and hollow agents: spread preferences,
constraints, max replicas per node, and the explanations of tasks left pending."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.crds import taskstates as ts
from shoal.store import etcd_server
from tests.helpers import eventually
from tests.integration.orchestration_support import Cluster, describe


@pytest.fixture
async def cluster(etcd: etcd_server.EtcdServer, prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster.open(etcd.url, prefix, tmp_path) as c:
        yield c


def zone_of(node: str) -> str:
    return node.split("-")[0][-1]  # "za-3" -> "a"


async def test_spread_constraints_and_max_replicas(cluster: Cluster) -> None:
    # Zones of unequal size: a has 3 nodes, b 2, c 1. Spreading splits by zone, not node.
    for zone, count in (("a", 3), ("b", 2), ("c", 1)):
        cluster.start_agent(f"z{zone}", count=count, labels={"zone": zone})
    cluster.start_manager()
    names = [*cluster.node_names("za", 3), *cluster.node_names("zb", 2), "zc"]
    await cluster.wait_ready(names)

    await cluster.apply("spread", {"replicas": 6, "template": {"image": "busybox"},
                                   "placement": {"preferences": [
                                       {"spread": "node.labels.zone"}]}})
    await cluster.apply("only-b", {"replicas": 4, "template": {"image": "busybox"},
                                   "placement": {"constraints": ["node.labels.zone==b"]}})
    await cluster.apply("not-a", {"replicas": 3, "template": {"image": "busybox"},
                                  "placement": {"constraints": ["node.labels.zone!=a"]}})

    per_node = await cluster.wait_running("spread", 6)
    per_zone: dict[str, int] = {}
    for node, n in per_node.items():
        per_zone[zone_of(node)] = per_zone.get(zone_of(node), 0) + n
    assert per_zone == {"a": 2, "b": 2, "c": 2}, per_node

    only_b = await cluster.wait_running("only-b", 4)
    assert set(only_b) <= {"zb-0", "zb-1"} and sum(only_b.values()) == 4, only_b
    not_a = await cluster.wait_running("not-a", 3)
    assert not any(node.startswith("za") for node in not_a), not_a

    # At most one replica per node on the two zone-b nodes: the third stays pending and
    # says why.
    await cluster.apply("capped", {"replicas": 3, "template": {"image": "busybox"},
                                   "placement": {"constraints": ["node.labels.zone==b"],
                                                 "maxReplicasPerNode": 1}})

    async def capped() -> list[str]:
        tasks = await cluster.current("capped")
        running = [t for t in tasks if ts.is_running(t)]
        pending = [t for t in tasks if t.status.get("state") == "pending"]
        if len(running) == 2 and len(pending) == 1 and pending[0].status.get("message"):
            return [str(pending[0].status["message"]), *(ts.node_name_of(t) or ""
                                                          for t in running)]
        return []
    message, *nodes = await eventually(capped, 15, what="2 capped replicas running")
    assert sorted(nodes) == ["zb-0", "zb-1"]
    assert message == ("no suitable node (constraint node.labels.zone==b matched 2 of "
                       "6 nodes; max replicas per node (1) reached on 2 nodes)"), message


async def test_pending_explanation_then_placed_when_a_node_fits(cluster: Cluster) -> None:
    cluster.start_agent("w", count=4, labels={"zone": "a"})
    cluster.start_agent("p", labels={"zone": "b"})
    cluster.start_manager()
    await cluster.wait_ready([*cluster.node_names("w", 4), "p"])
    await cluster.set_availability("p", "drain")

    await cluster.apply("db", {"replicas": 2, "template": {"image": "postgres"},
                               "placement": {"constraints": ["node.labels.zone==c"]}})

    async def explained() -> str:
        tasks = await cluster.current("db")
        messages = {str(t.status.get("message")) for t in tasks
                    if t.status.get("state") == "pending"}
        return messages.pop() if len(tasks) == 2 and len(messages) == 1 else ""
    message = await eventually(explained, 15, what="pending explanation")
    assert message == ("no suitable node (constraint node.labels.zone==c matched 0 of 5 "
                       "nodes; 1 node drained)"), message

    # A node that fits joins: the pending tasks are placed on it at once.
    cluster.start_agent("late", labels={"zone": "c"})
    per_node = await cluster.wait_running("db", 2)
    assert per_node == {"late": 2}, describe(await cluster.tasks("db"))
