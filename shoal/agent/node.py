"""What a node is, and the lease-bound heartbeat: how a node joins and stays alive.

:class:`NodeConfig` is what the agent knows of a node before it talks to etcd; its
``status()`` is what the agent reports (``nodereport``: the fold controller creates the
Node from it, with ``spec.role`` written once, and afterwards copies the agent-owned
status and labels; ``spec`` belongs to users and controllers). The agent writes no Node
itself: a worker's etcd user may not (docs/security.md).

Liveness is an etcd lease, not a timestamp the agent keeps rewriting: the key
``<prefix>/heartbeats/<node>`` is attached to a lease with TTL ``--heartbeat-ttl`` and the
agent refreshes the lease every TTL/3. When the agent dies or is cut off, etcd itself
deletes the key one TTL later, and the nodes controller, watching ``<prefix>/heartbeats/``,
marks the node down. No clock comparison across machines, no write per heartbeat.

One process may serve many hollow nodes. Each node gets its own lease (a node fails on
its own), and one loop refreshes all of them over one keepalive stream, so 1,000 nodes
cost one coroutine and 1,000 small stream messages per TTL/3 (~5 % of a CPU, measured),
not 1,000 loops. ``shared_lease`` puts every node of the process on one lease instead,
for benchmarks that want even that gone. The loop runs in a child process of the agent
(``shoal.agent.heartbeat`` says why); this module holds what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import platform
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import structlog

from shoal.crds import resource
from shoal.store import client, errors, etcd, leasestream

log = structlog.get_logger("shoal.agent.node")

HEARTBEAT_DIR = "heartbeats"
# Leases granted at once when a process registers many nodes: a burst of 1,000
# concurrent grants makes etcd's latency spike for everyone else.
GRANT_CONCURRENCY = 256


def agent_version() -> str:
    try:
        return metadata.version("shoal")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """What the agent knows about a node before it talks to etcd."""

    name: str
    address: str
    hostname: str
    role: str = "worker"
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    cpus: float = 1.0
    memory: int = 0
    runtime: str = "hollow"
    heartbeat_ttl: int = 3
    os: str = dataclasses.field(default_factory=lambda: platform.system().lower())
    architecture: str = dataclasses.field(default_factory=platform.machine)
    logs_endpoint: str | None = None  # where the agent serves task logs (logserver.py)

    def status(self) -> dict[str, Any]:
        """The agent-owned part of ``status`` for a ready node."""
        extra = {"logsEndpoint": self.logs_endpoint} if self.logs_endpoint else {}
        return {
            "state": "ready",
            "message": "",
            "address": self.address,
            "hostname": self.hostname,
            "platform": {"os": self.os, "architecture": self.architecture},
            "resources": {"cpus": self.cpus, "memory": self.memory},
            "engineLabels": {},
            "runtime": self.runtime,
            "agentVersion": agent_version(),
            "heartbeatTTL": self.heartbeat_ttl,
            **extra,
        }


def heartbeat_key(store: client.Store, node: str) -> bytes:
    return store.raw_key(HEARTBEAT_DIR, node)


def lease_ttl(seconds: float) -> int:
    """etcd leases are whole seconds; round up so the agent never promises less."""
    return max(1, math.ceil(seconds))


# --- host facts ---

def memory_bytes() -> int:
    """Total memory from /proc/meminfo (what ``docker info`` reports as Total Memory)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _interface_addresses() -> list[str]:
    """IPv4 addresses of the host's interfaces, in interface-index order (SIOCGIFADDR)."""
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                raw = fcntl.ioctl(sock.fileno(), 0x8915, req)  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address on this interface
            out.append(socket.inet_ntoa(raw[20:24]))
    return out


def local_addresses() -> set[str]:
    """Every IPv4 address of this host's interfaces, loopback included: ``swctl node ls``
    marks a node local when its address is one of these (and its hostname this host's)."""
    return {"127.0.0.1", *_interface_addresses()}


def default_address(etcd_url: str | None = None) -> str:
    """The node's underlay address when ``--address`` is not given.

    The address this host uses to reach etcd is the one other nodes can reach it on (in
    a namespace-per-node cluster it is the node's address on the shared bridge). When
    etcd is local that says nothing, so fall back to the first non-loopback IPv4
    address, and to 127.0.0.1 on a host with none.
    """
    if etcd_url:
        try:
            host, port = etcd.parse_url(etcd_url)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect((host, port))  # UDP connect: picks a route, sends nothing
                addr: str = sock.getsockname()[0]
            if not addr.startswith("127."):
                return addr
        except (OSError, ValueError):
            pass
    try:
        for addr in _interface_addresses():
            if not addr.startswith("127."):
                return addr
    except OSError:
        pass
    return "127.0.0.1"


# --- registration ---

async def _retrying(what: str, node: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """Retry a call while etcd is unreachable: an agent outlives etcd restarts."""
    backoff = 0.1
    while True:
        try:
            return await call()
        except errors.UnavailableError as exc:
            log.warning(f"{what} failed, retrying", node=node, error=str(exc), retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


# --- heartbeats ---

@dataclasses.dataclass
class _Beat:
    node: str
    key: bytes
    value: bytes
    lease: int = 0


class Heartbeats:
    """Lease-bound heartbeat keys for every node of this process, refreshed by one loop.

    ``on_renewed(node)`` runs after a lost lease was replaced (the key had expired, so the
    nodes controller has marked the node down): the agent re-asserts ``ready`` there.
    """

    def __init__(self, store: client.Store, ttl: int,
                 on_renewed: Callable[[str], Awaitable[None]] | None = None,
                 shared_lease: bool = False) -> None:
        self.store = store
        self.ttl = lease_ttl(ttl)
        self.interval = self.ttl / 3
        self.shared_lease = shared_lease
        self._on_renewed = on_renewed
        self._beats: dict[str, _Beat] = {}
        self._shared: int = 0
        self._started = resource.now_rfc3339()
        self.keepalive_rounds = 0
        self.last_round_seconds = 0.0
        self._unavailable = False
        self._stream = leasestream.KeepaliveStream(store.etcd.url, store.etcd.tls,
                                                   members=lambda: store.etcd.endpoints)

    def lease_of(self, node: str) -> int:
        return self._beats[node].lease

    async def _grant(self) -> int:
        lease: int = await _retrying("lease grant", "*", lambda: self.store.grant_lease(self.ttl))
        return lease

    async def add(self, node: str, address: str) -> None:
        """Put the node's heartbeat key on its lease (granting one) before it registers."""
        value = json.dumps({"node": node, "address": address, "started": self._started},
                           separators=(",", ":")).encode()
        beat = _Beat(node, heartbeat_key(self.store, node), value)
        self._beats[node] = beat
        if self.shared_lease:
            if not self._shared:
                self._shared = await self._grant()
            beat.lease = self._shared
        else:
            beat.lease = await self._grant()
        await _retrying("heartbeat put", node,
                        lambda: self.store.raw_put(beat.key, beat.value, beat.lease))

    async def run(self, alive: Callable[[], bool] = lambda: True) -> None:
        """Refresh every lease each TTL/3 until cancelled, while ``alive()`` says so.

        ``alive`` is the agent's proof of life: while it is false the leases are left to
        lapse (a wedged agent must look like a dead node), and refreshed again after.
        """
        stalled = False
        while True:
            started = time.monotonic()
            if alive():
                if stalled:
                    log.info("agent responsive again; heartbeat resumes",
                             node=self._first_node())
                stalled = False
                await self.round()
            elif not stalled:
                stalled = True
                log.error("agent event loop stalled; letting the heartbeat lapse",
                          node=self._first_node())
            self.last_round_seconds = time.monotonic() - started
            if self.last_round_seconds > self.interval:
                log.warning("heartbeat round slower than its interval",
                            node=self._first_node(), leases=len(self._beats),
                            seconds=round(self.last_round_seconds, 3))
            await asyncio.sleep(max(0.0, self.interval - self.last_round_seconds))

    async def round(self) -> None:
        """One keepalive for every lease; replace the leases that etcd has expired.

        A lease without an answer this round (a slow or broken stream) is simply asked
        again next round; with keepalives every TTL/3, two lost rounds are survivable.
        """
        by_lease: dict[int, list[_Beat]] = {}
        for beat in self._beats.values():
            by_lease.setdefault(beat.lease, []).append(beat)
        leases = list(by_lease)
        results = await self._stream.keepalive(leases, timeout=self.interval)
        self.keepalive_rounds += 1
        unanswered = sum(1 for ttl in results.values() if ttl is None)
        if unanswered and not self._unavailable:
            log.warning("heartbeat keepalives unanswered", node=self._first_node(),
                        leases=len(leases), unanswered=unanswered)
        elif not unanswered and self._unavailable:
            log.info("heartbeat keepalives answered again", node=self._first_node(),
                     leases=len(leases))
        self._unavailable = bool(unanswered)
        lost = [lease for lease in leases if results.get(lease) == 0]
        if lost:
            await asyncio.gather(*(self._renew(by_lease[lease]) for lease in lost))

    def _first_node(self) -> str:
        return next(iter(self._beats), "")

    async def _renew(self, beats: list[_Beat]) -> None:
        """The lease expired (a partition, a stalled process): new lease, keys back, ready."""
        try:
            lease = await self.store.grant_lease(self.ttl)
            await asyncio.gather(*(self.store.raw_put(b.key, b.value, lease) for b in beats))
        except errors.UnavailableError as exc:
            # The beats keep the expired lease, so the next round tries again.
            log.warning("heartbeat lease renewal failed, retrying next round",
                        node=beats[0].node, error=str(exc))
            return
        for beat in beats:
            beat.lease = lease
            log.warning("heartbeat lease had expired; renewed", node=beat.node, lease=lease)
        if self.shared_lease:
            self._shared = lease
        if self._on_renewed is not None:
            await asyncio.gather(*(self._on_renewed(b.node) for b in beats),
                                 return_exceptions=True)

    async def close(self) -> None:
        await self._stream.close()

    async def revoke_all(self) -> None:
        """On a clean stop: drop the keys at once, so the node is seen down immediately."""
        leases = {beat.lease for beat in self._beats.values() if beat.lease}
        with contextlib.suppress(errors.UnavailableError):
            await asyncio.gather(*(self.store.revoke_lease(lease) for lease in leases))


def default_hostname() -> str:
    return socket.gethostname()


def default_cpus() -> float:
    return float(os.cpu_count() or 1)
