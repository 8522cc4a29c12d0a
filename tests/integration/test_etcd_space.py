"""etcd out of space (its NOSPACE alarm), with a real etcd started with a 16 MiB quota, a
controller-manager and a hollow agent: what a user sees, what keeps running, and how
the cluster gets out of it (``shoal.store.maintenance``, ``shoal.controllers.maintenance``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.runtime import events
from shoal.store import errors, etcd, etcd_server, maintenance
from tests.helpers import eventually
from tests.integration.cli_support import Swctl, service
from tests.integration.orchestration_support import TASKS, Cluster

QUOTA = 16 * 1024 * 1024
VALUE = 256 * 1024


@pytest.fixture
def small_etcd(tmp_path: Path) -> Iterator[etcd_server.EtcdServer]:
    server = etcd_server.EtcdServer(tmp_path / "etcd" / "data", quota_bytes=QUOTA)
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def cluster(small_etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("SHOAL_ETCD_QUOTA_BYTES", str(QUOTA))
    async with Cluster.open(small_etcd.url, prefix, tmp_path) as c:
        c.start_manager()
        c.start_agent("n1")
        await c.wait_ready(["n1"])
        yield c


async def fill(client: etcd.EtcdClient, key_of: str, first: int = 0) -> int:
    """Put VALUE-sized junk (outside the cluster's prefix) until etcd refuses: under one
    key rewritten (``key_of="one"``: history only, compaction frees it) or under a new
    key each time (``"many"``: live data, compaction frees nothing); the next index."""
    junk = os.urandom(VALUE)
    for i in range(first, first + 4 * QUOTA // VALUE):
        key = b"/junk/0" if key_of == "one" else f"/junk/{i:04}".encode()
        try:
            await client.put(key, junk)
        except errors.NoSpaceError:
            return i
    raise AssertionError("etcd never ran out of space")


async def fill_with_live_data(client: etcd.EtcdClient) -> None:
    """Fill with live junk until recovery cannot free enough: the file etcd measures
    holds free pages too, so the first recoveries may still get under the quota."""
    first = 0
    for _ in range(8):
        first = await fill(client, "many", first)
        await asyncio.sleep(5)  # past the loop's first try (jitter, compaction, defrag)
        if await maintenance.no_space_alarms(client):
            return
    raise AssertionError("recovery kept freeing enough; etcd never stayed full")


async def alarm_gone(client: etcd.EtcdClient) -> bool:
    return not await maintenance.no_space_alarms(client)


async def test_history_filling_etcd_is_recovered_by_the_controller_manager(
        cluster: Cluster) -> None:
    await cluster.apply("web", {"replicas": 2, "template": {"image": "busybox"}})
    await cluster.wait_running("web", 2)
    client = cluster.store.etcd
    await fill(client, "one")
    # Compaction frees the rewritten key's history: the loop disarms without anyone's help.
    await eventually(lambda: alarm_gone(client), 20, what="NOSPACE alarm disarmed")
    await cluster.scale("web", 3)
    await cluster.wait_running("web", 3)
    recorded = await events.list_events(cluster.store, maintenance_object())
    reasons = {e.spec["reason"] for e in recorded}
    assert {"EtcdOutOfSpace", "EtcdSpaceRecovered"} <= reasons, recorded
    assert any("alarm disarmed" in e.spec["message"] for e in recorded)


def maintenance_object() -> object:
    from shoal.crds import resource
    return resource.new("Etcd", "etcd")


async def test_full_etcd_refuses_apply_clearly_keeps_tasks_and_recovers_after_deletes(
        cluster: Cluster, tmp_path: Path) -> None:
    await cluster.apply("web", {"replicas": 2, "template": {"image": "busybox"}})
    await cluster.wait_running("web", 2)
    client = cluster.store.etcd
    await fill_with_live_data(client)
    swctl = Swctl(cluster.etcd_url, cluster.prefix, tmp_path)
    manifest = swctl.write("api.yaml", service("api", 2))

    # A write says what, where and how, at once (no 10 s of retries), and writes nothing.
    loop = asyncio.get_running_loop()
    started = loop.time()
    refused = await asyncio.to_thread(swctl, "apply", "-f", str(manifest), expect=1)
    assert loop.time() - started < 8
    err = refused.stderr
    assert "etcd is out of space and refused the write, which changed nothing" in err, err
    # The size is whatever the filling reached (writes in flight overshoot the quota).
    assert re.search(rf"NOSPACE alarm on shoal \({re.escape(cluster.etcd_url)}\): "
                     r"db \d+(\.\d+)? MiB; quota 16\.0 MiB", err), err
    assert "swctl etcd recover-space" in err and "--quota-backend-bytes" in err, err
    assert "Traceback" not in err
    gone = await asyncio.to_thread(swctl, "get", "services", "api", expect=None)
    assert gone.returncode != 0 and "not found" in gone.stderr

    # Where a user looks: get nodes warns, etcd status shows the alarm and the sizes.
    nodes = await asyncio.to_thread(swctl, "get", "nodes")
    assert "warning: etcd is out of space and refuses writes (NOSPACE alarm" in nodes.stderr
    status = await asyncio.to_thread(swctl, "etcd", "status")
    assert "alarm: NOSPACE on member" in status.stdout, status.stdout

    # The compaction the loop does frees nothing here (live data): it stays. Give the
    # controllers and the agent writes to make meanwhile: a task deleted (deletes are
    # accepted) for the orchestrator to replace, an agent restarted (a new heartbeat
    # lease to ask for). They keep running, the other task too, and retry quietly.
    victim = (await cluster.tasks("web"))[0]
    await client.delete_prefix(cluster.store.key(TASKS, victim.name, "default"))
    cluster.agents["n1"].signal(signal.SIGKILL)
    await cluster.agents["n1"].wait()
    cluster.start_agent("n1")
    await asyncio.sleep(12)
    assert all(p.alive() for p in cluster.procs if p.name != "agent-n1" or
               p is cluster.agents["n1"]), [p.name for p in cluster.procs]
    assert len(await cluster.running_per_node("web")) == 1
    assert await maintenance.no_space_alarms(client)

    # Deleting the junk (deletes are accepted) lets the next try recover.
    await client.delete_prefix(b"/junk/")
    await eventually(lambda: alarm_gone(client), 30, what="NOSPACE alarm disarmed")
    await asyncio.to_thread(swctl, "apply", "-f", str(manifest))
    await cluster.scale("web", 4)
    await cluster.wait_running("web", 4)
    await cluster.wait_running("api", 2)

    lines = []
    for name in ("manager.log", "agent-n1.log"):
        text = (tmp_path / name).read_text()
        lines += [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    refusals = [r for r in lines if "space exceeded" in str(r.get("error", ""))]
    # Quietly: one warning per process and outage, not a line per attempt.
    assert len(refusals) < 20, "\n".join(map(str, refusals))
    assert any(r.get("event", "").startswith("etcd is still out of space after recovery")
               for r in lines)
