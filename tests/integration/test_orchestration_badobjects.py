"""Garbage written straight into etcd does not stop the controllers: a Service whose
spec is nonsense gets ``Valid=False`` saying why, a Task with a non-integer slot gets a
condition and is stopped, a Node with an unreadable status is skipped — and a good
service next to them still runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.crds import conditions
from shoal.store import etcd_server
from tests.helpers import eventually
from tests.integration.orchestration_support import NODES, SERVICES, TASKS, Cluster


@pytest.fixture
async def cluster(etcd: etcd_server.EtcdServer, prefix: str,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster.open(etcd.url, prefix, tmp_path) as c:
        yield c


async def test_bad_objects_are_reported_and_skipped(cluster: Cluster) -> None:
    store = cluster.store
    cluster.start_agent("b", count=2)
    manager = cluster.start_manager()
    await cluster.wait_ready(["b-0", "b-1"])

    def put(key: bytes, doc: object) -> bytes:
        return json.dumps(doc).encode()

    # Every version of every task, from here on.
    seen: dict[bytes, list[bytes]] = {}
    _, start = await store.raw_list(store.kind_prefix(TASKS))

    async def follow() -> None:
        async for _, events in store.raw_watch(store.kind_prefix(TASKS), start + 1):
            for ev in events:
                seen.setdefault(ev.key, []).append(b"" if ev.deleted else ev.value)
    watcher = asyncio.create_task(follow())
    bad_key = store.key(TASKS, "good.x.1", "default")

    await store.raw_put(store.key(SERVICES, "junk", "default"), put(b"", {
        "apiVersion": "shoal.io/v1", "kind": "Service",
        "metadata": {"name": "junk", "namespace": "default", "uid": "junk-uid"},
        "spec": {"replicas": "lots", "template": 5, "mode": "sideways"}}))
    await store.raw_put(store.key(TASKS, "nothing", "default"), b"\x00not json")
    await store.raw_put(store.key(NODES, "weird"), put(b"", {
        "apiVersion": "shoal.io/v1", "kind": "Node", "metadata": {"name": "weird"},
        "spec": {"availability": "active"},
        "status": {"state": "ready", "platform": "linux", "resources": "many"}}))
    await cluster.apply("good", {"replicas": 2, "template": {"image": "busybox"}})

    # The good service runs on the two real nodes, never on the unreadable one.
    per_node = await cluster.wait_running("good", 2)
    assert set(per_node) <= {"b-0", "b-1"}, per_node
    # A task of that service with a slot that is not a number.
    await store.raw_put(store.key(TASKS, "good.x.1", "default"), put(b"", {
        "apiVersion": "shoal.io/v1", "kind": "Task",
        "metadata": {"name": "good.x.1", "namespace": "default",
                     "labels": {"shoal.io/service": "good"}},
        "spec": {"serviceName": "good", "slot": "x", "template": {"image": "busybox"},
                 "desiredState": "running"},
        "status": {"state": "pending"}}))

    async def junk_reported() -> str:
        svc = await store.get(SERVICES, "junk", "default")
        cond = conditions.get_condition(svc, "Valid")
        return str(cond["message"]) if cond and cond["status"] == "False" else ""
    message = await eventually(junk_reported, 10, what="junk service marked invalid")
    assert 'spec.replicas: must be an integer, got string "lots"' in message, message
    assert "spec.template: must be an object" in message, message
    assert not await cluster.tasks("junk")

    async def bad_task_handled() -> bool:
        # It never reached a node, so once stopped it is deleted at once: look at every
        # version it had, not just the latest.
        versions = [json.loads(v) for v in seen.get(bad_key, []) if v]
        marked = [v for v in versions
                  if v["spec"].get("desiredState") == "shutdown"
                  and any(c.get("type") == "Valid" and c.get("status") == "False"
                          and "spec.slot must be an integer, got 'x'" in c.get("message", "")
                          for c in v.get("status", {}).get("conditions", []))]
        return bool(marked)
    await eventually(bad_task_handled, 10, what="malformed task marked and stopped")

    # The weird node: no heartbeat key, so the nodes controller reports it down.
    async def weird_down() -> bool:
        return (await cluster.node("weird")).status.get("state") == "down"
    await eventually(weird_down, 10, what="node without heartbeat marked down")

    # Everything still works after all that: scaling goes through.
    await cluster.scale("good", 4)
    await cluster.wait_running("good", 4)
    assert manager.popen.poll() is None, "controller-manager died"
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
