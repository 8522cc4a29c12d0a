"""The agent as a node: registration, the heartbeat lease, and losing and regaining it.

Agents are real processes (``python -m shoal.agent.main``) killed with real signals.
"""

from __future__ import annotations

import asyncio
import platform
import signal
import time
from collections.abc import Callable
from pathlib import Path

from shoal.crds import resource
from shoal.store import errors, etcd_server
from tests.helpers import eventually
from tests.integration.agent_support import NODES, TTL, AgentCluster


async def _update_node(c: AgentCluster, name: str,
                       edit: Callable[[resource.Resource], object]) -> None:
    """One read-modify-write of a Node, read again on conflict: the controllers write
    Nodes too (the fold from the agent's reports, the nodes controller when the
    heartbeat key goes), so a single compare-and-swap races them."""

    async def edited() -> bool:
        node = await c.store.get(NODES, name)
        edit(node)
        try:
            await c.store.update(NODES, node)
        except errors.ConflictError:
            return False
        return True

    await eventually(edited, 5, what=f"node {name} edited")


async def test_registers_node_with_labels_role_status_and_heartbeat(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        c.start_agent("n1", "--label", "zone=a", "--label", "disk=ssd", "--role", "manager",
                      "--cpus", "2", "--memory", "1Gi", "--address", "10.9.8.7")
        await c.wait_ready(["n1"])
        node = await c.store.get(NODES, "n1")
        assert node.metadata.labels == {"zone": "a", "disk": "ssd"}
        assert node.spec == {"role": "manager", "availability": "active"}
        status = node.status
        assert status["state"] == "ready"
        assert status["address"] == "10.9.8.7"
        assert status["hostname"]
        assert status["platform"] == {"os": platform.system().lower(),
                                      "architecture": platform.machine()}
        assert status["resources"] == {"cpus": 2.0, "memory": 1024 ** 3}
        assert status["runtime"] == "hollow"
        assert status["heartbeatTTL"] == TTL
        assert status["engineLabels"] == {}
        assert status["agentVersion"]
        beats = await c.heartbeats()
        value, lease = beats["n1"]
        assert value["node"] == "n1" and value["address"] == "10.9.8.7" and value["started"]
        assert lease != 0, "the heartbeat key must be attached to a lease"


async def test_restart_keeps_spec_written_by_users_and_drops_stale_features(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        first = c.start_agent("n1", "--label", "zone=a", "--role", "manager")
        await c.wait_ready(["n1"])
        await first.stop()
        def offline_edits(node: resource.Resource) -> None:
            # What `swctl node drain` and `swctl node update --label-add` write meanwhile.
            node.spec["availability"] = "drain"
            node.metadata.labels["rack"] = "r7"
            node.status["state"] = "down"
            # What the first run advertised for features the second run has off.
            node.status["logsEndpoint"] = "127.0.0.1:1"
            node.status["dataplane"] = "nftables"

        await _update_node(c, "n1", offline_edits)

        c.start_agent("n1", "--label", "zone=b", "--role", "worker", "--logs-port", "off")

        async def ready_again() -> bool:
            n = await c.store.get(NODES, "n1")
            return n.status.get("state") == "ready" and n.metadata.labels.get("zone") == "b"

        await eventually(ready_again, 20, what="node re-registered")
        node = await c.store.get(NODES, "n1")
        assert node.spec == {"role": "manager", "availability": "drain"}
        assert node.metadata.labels == {"zone": "b", "rack": "r7"}
        assert "logsEndpoint" not in node.status, "no log server runs: none advertised"
        assert "dataplane" not in node.status, "a hollow node has no dataplane"


async def test_heartbeat_key_disappears_within_ttl_after_sigkill(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        agent = c.start_agent("n1")
        await c.wait_ready(["n1"])
        await asyncio.sleep(TTL)  # a few keepalive rounds: the lease is being refreshed
        assert "n1" in await c.heartbeats()
        killed = time.monotonic()
        agent.signal(signal.SIGKILL)  # the agent only: its heartbeat child must notice

        async def gone() -> bool:
            return "n1" not in await c.heartbeats()

        await eventually(gone, TTL + 1.0, interval=0.05, what="heartbeat key expired")
        elapsed = time.monotonic() - killed
        assert elapsed <= TTL + 1.0, elapsed


async def test_clean_stop_revokes_the_lease_at_once(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        agent = c.start_agent("n1")
        await c.wait_ready(["n1"])
        stopped = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert await agent.wait(10) == 0

        async def gone() -> bool:
            return "n1" not in await c.heartbeats()

        await eventually(gone, 1.0, interval=0.05, what="heartbeat key revoked")
        assert time.monotonic() - stopped < TTL


async def test_lost_lease_is_replaced_and_node_reasserted_ready(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        c.start_agent("n1")
        await c.wait_ready(["n1"])
        _, lease = (await c.heartbeats())["n1"]
        # A partition longer than the TTL, as etcd sees it: the lease is gone, and the
        # nodes controller has marked the node down.
        await c.store.revoke_lease(lease)
        await _update_node(c, "n1", lambda node: node.status.update(state="down"))

        async def renewed() -> bool:
            beats = await c.heartbeats()
            n = await c.store.get(NODES, "n1")
            return "n1" in beats and beats["n1"][1] != lease and \
                n.status.get("state") == "ready"

        await eventually(renewed, TTL + 3, what="new lease, key back, node ready")


async def test_wedged_agent_lets_its_heartbeat_lapse_and_recovers(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    # The heartbeat runs in a child process; it must not keep a frozen agent looking alive.
    async with AgentCluster.open(etcd.url, prefix, tmp_path) as c:
        agent = c.start_agent("n1", "--stall-timeout", "1")
        await c.wait_ready(["n1"])
        _, lease = (await c.heartbeats())["n1"]
        agent.signal(signal.SIGSTOP)
        try:
            async def gone() -> bool:
                return "n1" not in await c.heartbeats()

            await eventually(gone, 1 + TTL + 1.5, interval=0.05, what="heartbeat lapsed")
        finally:
            agent.signal(signal.SIGCONT)

        async def back() -> bool:
            beats = await c.heartbeats()
            return "n1" in beats and beats["n1"][1] != lease

        await eventually(back, TTL + 2, what="heartbeat renewed after the agent resumed")
