"""The agent process: one or many nodes, one task watch, one status writer, one heartbeat loop.

An agent serves ``count`` nodes (1 for a real node; K hollow nodes named ``<name>-0..K-1``
for scale work). Everything that would multiply by K is shared instead: a single watch
routes each task to its node's :class:`TaskManager`, a single :class:`StatusWriter`
writes every report (so concurrent writes share transactions), and a single loop keeps
every heartbeat lease alive. Per node there is only what must be per node: an executor,
a task manager with its work queue, a lease.

What it reads: its nodes' task projections, ``<p>/nodes/<node>/tasks/`` (the Task's
metadata and spec, written by the store with the Task; ``shoal.store.projections``),
and at start-up its own reports, ``<p>/reports/<node>/`` (the status it reported, so a
restarted agent knows where each task got to). Never the registry's Tasks: a worker's
etcd user cannot read them (docs/security.md). One node watches its own prefix; an
agent serving many hollow nodes watches ``<p>/nodes/`` and skips the others' keys.
Reports live in a tree of their own, so the watch carries no echo of its own writes.

The watch is built on the raw etcd watch rather than ``shoal.store.watch`` for
robustness: one undecodable value must not stop every agent in the cluster, so each
value is decoded on its own and a bad one is logged and skipped.

Start-up order matters for failure detection: heartbeat key first, then the node report
(``nodereport``: the fold controller creates or updates the Node from it; the nodes
controller says ready or down from the heartbeat), then the tasks. A Node that says
ready always has a live heartbeat key, so the nodes controller never sees a ready node
without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from shoal.agent import heartbeat, logserver, node, nodereport, statuswriter, taskmanager
from shoal.agent.exec import hollow
from shoal.agent.exec.executor import Executor
from shoal.crds import kinds, resource
from shoal.pki.bundle import Bundle
from shoal.runtime import gcpolicy
from shoal.store import client, codec, errors, etcd, projections, watch

if TYPE_CHECKING:
    from shoal.agent import dataplane, taskfiles
    from shoal.net import lb

log = structlog.get_logger("shoal.agent")

RUNTIMES = ("hollow", "docker", "process")
_TASKS = "tasks"  # the section of a node's keys that holds its task projections
_YIELD_EVERY = 512  # events handled between yields to the event loop
LAG_WARNING = 1.0  # seconds of event-loop lag worth a warning
DEFAULT_STATE_DIR = "/run/shoal"  # --state-dir


@dataclasses.dataclass
class AgentConfig:
    """Everything ``swctl agent`` can be told; see docs/agent.md for each field."""

    etcd_url: str
    prefix: str = "/shoal"
    node_name: str = "node"
    runtime: str = "hollow"
    count: int = 1
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    role: str = "worker"
    heartbeat_ttl: float = 3.0
    address: str | None = None
    hostname: str | None = None
    cpus: float | None = None
    memory: int | None = None
    hollow_start_delay: float = 0.1
    fail_rate: float = 0.0
    seed: int | None = None
    hollow_state: str | None = None
    shared_lease: bool = False
    concurrency: int = 32
    resync: float = 60.0
    status_linger: float = 0.2
    log_level: str = "info"
    log_format: str = "auto"
    tune_gc: bool = True
    stall_timeout: float | None = None  # default max(10 s, 3 x TTL); see heartbeat.py
    # Port of the task-log endpoint on the node's address (logserver.py); 0 = any free
    # port, None = no endpoint.
    logs_port: int | None = logserver.DEFAULT_PORT
    # Task networking (dataplane.py): auto (IPVS if the kernel has it, else nftables),
    # nftables, ipvs, or none. Real runtimes only; never for hollow nodes.
    dataplane: str = "auto"
    state_dir: str = DEFAULT_STATE_DIR  # generated files (resolv.conf, task files), per node
    # Seconds a task that leaves the balancer keeps running before it is stopped, so
    # every node has dropped it and connections in flight end (dataplane.py).
    drain: float = 1.0
    # The cluster's keyring (shoal.crds.sealed), which opens the secrets of this node's
    # tasks; None: tasks that use a secret are rejected, saying so.
    keyring: str | None = None
    # CA and client certificate for https etcd endpoints (--etcd-ca/cert/key).
    etcd_tls: Bundle | None = None
    # The node's own certificate (--tls-dir: DIR/ca.crt, DIR/node.crt, DIR/node.key): its
    # endpoints (task logs) then serve TLS to the cluster's admin certificate only.
    node_tls: Bundle | None = None

    def node_names(self) -> list[str]:
        if self.count <= 1:
            return [self.node_name]
        return [f"{self.node_name}-{i}" for i in range(self.count)]


class UnknownRuntimeError(ValueError):
    pass


def driver_class(runtime: str) -> Any:
    """The executor class of a non-hollow runtime, imported now (UnknownRuntimeError if
    it cannot be); lets ``swctl agent`` fail at once instead of after registering.

    The imports are plain but inside the function on purpose: a driver package pulls in
    the docker SDK or spawns shims, and a hollow agent (a thousand nodes in one process)
    or any other ``swctl`` verb must not pay for that. Nothing imports this module's
    drivers at module level, so the laziness holds and mypy still sees real modules.
    """
    try:
        if runtime == "docker":
            from shoal.agent.docker import driver as docker_driver
            return docker_driver.DockerExecutor
        if runtime == "process":
            from shoal.agent.process import driver as process_driver
            return process_driver.ProcessExecutor
    except ImportError as exc:
        raise UnknownRuntimeError(f'runtime "{runtime}" is not available: {exc}') from None
    raise UnknownRuntimeError(f'unknown runtime "{runtime}": expected one of '
                              f'{", ".join(RUNTIMES)}')


def make_executor(cfg: AgentConfig, node_name: str, journal: hollow.Journal | None,
                  wheel: hollow.TimerWheel | None = None) -> Executor:
    """The executor driver for one node; docker and process are imported lazily."""
    if cfg.runtime == "hollow":
        return hollow.HollowExecutor(node_name, start_delay=cfg.hollow_start_delay,
                                     fail_rate=cfg.fail_rate, seed=cfg.seed, journal=journal,
                                     wheel=wheel)
    executor: Executor = driver_class(cfg.runtime)(node_name)
    return executor


def decode_task(value: bytes, revision: int) -> resource.Resource | None:
    """A Task from its etcd value, leniently; None if even its spec cannot be read.

    A value whose ``status`` or ``metadata`` extras are garbage still yields the task (its
    spec tells whose it is, and the agent's next status write repairs the status).
    """
    try:
        return codec.decode(value, revision)
    except Exception:  # malformed JSON or a shape Resource.from_dict cannot take
        pass
    try:
        data = json.loads(value)
        if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
            return None
        meta = data.get("metadata")
        if not isinstance(meta, dict):
            return None
        data["metadata"] = {k: v for k, v in meta.items()
                            if k in ("name", "namespace", "uid") and isinstance(v, str)}
        if not isinstance(data.get("status"), dict):
            data["status"] = {}
        obj = resource.Resource.from_dict(data)
    except Exception:
        return None
    obj.metadata.resourceVersion = str(revision)
    codec.remember_spec(obj)
    return obj


class Agent:
    """Serves the nodes of one process until cancelled."""

    def __init__(self, cfg: AgentConfig) -> None:
        if cfg.runtime not in RUNTIMES:
            raise UnknownRuntimeError(f'unknown runtime "{cfg.runtime}": expected one of '
                                      f'{", ".join(RUNTIMES)}')
        self.cfg = cfg
        self.registry = kinds.Registry.builtin()
        self.tasks_info = self.registry.lookup("tasks")
        self.nodes_info = self.registry.lookup("nodes")
        self.store: client.Store | None = None
        self.heartbeats: heartbeat.HeartbeatProcess | None = None
        self.writer: statuswriter.StatusWriter | None = None
        self.managers: dict[str, taskmanager.TaskManager] = {}
        self.executors: dict[str, Executor] = {}
        self.node_configs: dict[str, node.NodeConfig] = {}
        self.journal: hollow.Journal | None = None
        self.logserver: logserver.LogServer | None = None
        self.dataplanes: dict[str, dataplane.Dataplane] = {}
        self.files: dict[str, taskfiles.TaskFiles] = {}
        self.ready = asyncio.Event()  # set once every node serves its tasks
        self.started_at = time.monotonic()
        self.timings: dict[str, float] = {}
        self.max_loop_lag = 0.0
        self.undecodable = 0
        self._route: dict[str, str] = {}  # task key "ns/name" -> node it is routed to
        self.reports: nodereport.NodeReports | None = None
        self._background: list[asyncio.Task[Any]] = []

    # --- start-up ---

    async def _connect(self) -> client.Store:
        backoff = 0.1
        while True:
            try:
                return await client.Store.connect(self.cfg.etcd_url, self.cfg.prefix,
                                                  tls=self.cfg.etcd_tls)
            except errors.UnavailableError as exc:
                log.warning("etcd unreachable, retrying", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _node_configs(self) -> list[node.NodeConfig]:
        cfg = self.cfg
        names = cfg.node_names()
        address = cfg.address or node.default_address(cfg.etcd_url)
        out = []
        for name in names:
            # K simulated nodes get their own hostnames, so node.hostname constraints can
            # tell them apart; a real node reports the machine's.
            hostname = cfg.hostname or (name if cfg.count > 1 else node.default_hostname())
            out.append(node.NodeConfig(
                name=name, address=address, hostname=hostname, role=cfg.role,
                labels=dict(cfg.labels),
                cpus=cfg.cpus if cfg.cpus is not None else node.default_cpus(),
                memory=cfg.memory if cfg.memory is not None else node.memory_bytes(),
                runtime=cfg.runtime, heartbeat_ttl=node.lease_ttl(cfg.heartbeat_ttl)))
        return out

    async def run(self) -> None:
        """Register, heartbeat and serve tasks until cancelled; then stop cleanly."""
        try:
            await self._start()
            await asyncio.gather(*self._background)
        finally:
            await self._stop()

    async def _start(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        self.store = store = await self._connect()
        configs = self._node_configs()
        if cfg.runtime == "hollow" and cfg.hollow_state:
            self.journal = hollow.Journal(Path(cfg.hollow_state))
            self.timings["journal"] = time.monotonic() - t0
        wheel = hollow.TimerWheel()
        for c in configs:
            self.executors[c.name] = make_executor(cfg, c.name, self.journal, wheel)
        configs = await self._serve_logs(configs)
        self.node_configs = {c.name: c for c in configs}
        self._background.append(asyncio.create_task(self._watch_lag()))
        gcpolicy.watch_pauses()  # reported in stats(), long ones logged
        if cfg.tune_gc:
            # The task cache is the heap: collections on a timer, not per allocation count.
            gcpolicy.install(watchdog=False)  # _watch_lag already watches the loop

        self.heartbeats = heartbeat.HeartbeatProcess(
            lambda: store.url, cfg.prefix, node.lease_ttl(cfg.heartbeat_ttl), configs,
            shared_lease=cfg.shared_lease, stall_after=cfg.stall_timeout,
            log_level=cfg.log_level, log_format=cfg.log_format, tls=cfg.etcd_tls,
            # A lease that lapsed means this node was cut off: its task watch may sit on
            # a connection still in TCP's retransmission backoff after the network is
            # back, and the tasks replaced meanwhile would keep running for seconds more.
            on_lapsed=lambda: store.etcd.reconnect("a heartbeat lease lapsed"))
        await self.heartbeats.start()
        self.timings["heartbeats"] = time.monotonic() - t0
        self.reports = nodereport.NodeReports(store)
        for c in configs:
            self.reports.publish(c.name, c.role, c.labels, c.status())
        await self.reports.flush()
        self._background.append(asyncio.create_task(self.reports.run()))
        self.timings["registered"] = time.monotonic() - t0
        log.info("nodes registered", nodes=len(configs), node=configs[0].name,
                 seconds=round(self.timings["registered"], 3))

        self.writer = statuswriter.StatusWriter(store, linger=cfg.status_linger)
        self._background.append(asyncio.create_task(self.writer.run()))
        for c in configs:
            network = await self._start_dataplane(c)
            self.managers[c.name] = taskmanager.TaskManager(
                c.name, self.executors[c.name], self.writer, concurrency=cfg.concurrency,
                resync=cfg.resync, network=network, files=self._task_files(c))
            if network is not None:
                network.touch = self.managers[c.name].touch
        revision = await self._relist()
        self.timings["listed"] = time.monotonic() - t0
        for i, manager in enumerate(self.managers.values()):
            await manager.start()
            if i % 16 == 15:
                await asyncio.sleep(0)  # 1,000 nodes adopting at once would stall the loop
        self.timings["serving"] = time.monotonic() - t0
        self._background.append(asyncio.create_task(self._watch_tasks(revision)))
        self.ready.set()
        log.info("agent ready", nodes=len(configs), node=configs[0].name, runtime=cfg.runtime,
                 tasks=len(self._route), seconds=round(self.timings["serving"], 3))

    async def _serve_logs(self, configs: list[node.NodeConfig]) -> list[node.NodeConfig]:
        """Start the log endpoint on the node's address before registering, so the Node
        says where its logs are from its first write. A failure costs ``swctl logs`` for
        this node, never the node itself."""
        if self.cfg.logs_port is None or not configs:
            return configs
        self.logserver = logserver.LogServer(self.executors, configs[0].address,
                                             self.cfg.logs_port, tls=self.cfg.node_tls)
        try:
            endpoint = await self.logserver.start()
        except OSError as exc:
            log.error("cannot serve task logs; swctl logs will not reach this node",
                      node=configs[0].name, address=configs[0].address,
                      port=self.cfg.logs_port, error=str(exc))
            self.logserver = None
            return configs
        return [dataclasses.replace(c, logs_endpoint=endpoint) for c in configs]

    async def _start_dataplane(self, c: node.NodeConfig) -> dataplane.Dataplane | None:
        """The node's dataplane, built before its tasks are served (a restarted agent
        must know its running tasks' networks before reconciling them)."""
        cfg = self.cfg
        if cfg.dataplane == "none" or cfg.runtime == "hollow" or cfg.count > 1:
            return None
        assert self.store is not None
        # Imported here: pyroute2 and dnspython cost hollow agents start-up time for nothing.
        from shoal.agent import dataplane
        backends: dict[str, lb.BackendName | None] = {
            "auto": None, "nftables": "nftables", "ipvs": "ipvs"}
        if cfg.dataplane not in backends:
            raise ValueError(f'unknown dataplane "{cfg.dataplane}": expected auto, '
                             "nftables, ipvs or none")
        plane = dataplane.Dataplane(
            self.store, c.name, c.address, observe=self.executors[c.name].observe,
            backend=backends[cfg.dataplane], state_dir=cfg.state_dir, drain=cfg.drain,
            reports=self.reports)
        await plane.start()
        self.dataplanes[c.name] = plane
        return plane

    def _task_files(self, c: node.NodeConfig) -> taskfiles.TaskFiles | None:
        """The node's secret and config files; hollow nodes run nothing to mount into."""
        if self.cfg.runtime == "hollow":
            return None
        assert self.store is not None
        # Imported here, like the drivers: hollow agents never mount files.
        from shoal.agent import taskfiles
        consumer = None
        if self.cfg.runtime == "docker":
            # dockerd makes the bind mounts, in its own mount namespace, which is not
            # ours when this agent runs under `ip netns exec` (a netns node).
            from shoal.agent.docker import dockerd
            consumer = dockerd.daemon_pid
        files = taskfiles.TaskFiles(
            self.store, c.name, taskfiles.node_root(self.cfg.state_dir, c.name),
            Path(self.cfg.keyring) if self.cfg.keyring else None, consumer)
        self.files[c.name] = files
        return files

    async def _stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for plane in self.dataplanes.values():
            with contextlib.suppress(Exception):
                await plane.close()  # the kernel state stays: tasks keep their network
        if self.logserver is not None:
            await self.logserver.close()
        await asyncio.gather(*(m.close() for m in self.managers.values()),
                             return_exceptions=True)
        # A clean stop drops the heartbeat keys at once, so the node is seen down now
        # rather than one TTL later; workloads keep running and are adopted on restart.
        if self.heartbeats is not None:
            with contextlib.suppress(Exception):
                await self.heartbeats.stop(revoke=True)
        for executor in self.executors.values():
            with contextlib.suppress(Exception):
                await executor.close()
        for files in self.files.values():
            files.close()  # unmounts the tmpfs only if no task has files left
        if self.journal is not None:
            self.journal.close()
        if self.store is not None:
            await self.store.close()
        log.info("agent stopped", node=self.cfg.node_name, **self.stats())

    # --- the task watch ---

    def _nodes_prefix(self) -> bytes:
        assert self.store is not None
        return projections.nodes_prefix(self.store.prefix)

    def _scope(self) -> tuple[bytes, bytes]:
        """The keys this agent reads (its node's, or every node's for many hollow ones):
        (tasks and copies, reports)."""
        assert self.store is not None
        p = self.store.prefix
        if len(self.managers) == 1:
            node_name = next(iter(self.managers))
            return (projections.node_prefix(p, node_name),
                    projections.node_reports_prefix(p, node_name))
        return self._nodes_prefix(), projections.reports_prefix(p)

    async def _range(self, start: bytes, revision: int,
                     found: Any) -> int:
        """Every key under ``start`` at ``revision`` (0: now) through ``found(kv)``."""
        assert self.store is not None
        end = etcd.prefix_end(start)
        seen = 0
        while True:
            kvs, rev, more = await self.store.etcd.range_raw(start, end, revision, 2000)
            revision = revision or rev
            for kv in kvs:
                found(kv)
                seen += 1
                if seen % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            if not more or not kvs:
                return revision
            start = kvs[-1].key + b"\0"

    async def _relist(self) -> int:
        """Read our nodes' tasks and reports at one revision and hand each node its tasks,
        with the status it reported (start, RESET); reports of tasks gone meanwhile are
        deleted."""
        assert self.store is not None and self.writer is not None
        nodes, reports_at = self._nodes_prefix(), projections.reports_prefix(self.store.prefix)
        scope, report_scope = self._scope()
        tasks: dict[tuple[str, str], resource.Resource] = {}
        reports: dict[tuple[str, str], tuple[str, dict[str, Any], int]] = {}

        def task_found(kv: Any) -> None:
            where = projections.parse_node_key(nodes, kv.key)
            if where is not None and where.section == _TASKS and where.node in self.managers:
                obj = self._decode_task(where, kv.value, kv.mod_revision)
                if obj is not None:
                    tasks[(where.node, f"{where.namespace}/{where.name}")] = obj

        def report_found(kv: Any) -> None:
            where = projections.parse_report_key(reports_at, kv.key)
            if where is not None and where.node in self.managers:
                found = projections.decode_report(kv.value)
                if found is not None:
                    reports[(where.node, f"{where.namespace}/{where.name}")] = (
                        *found, kv.mod_revision)

        backoff = 0.1
        while True:
            try:
                tasks.clear()
                reports.clear()
                revision = await self._range(scope, 0, task_found)
                await self._range(report_scope, revision, report_found)
                break
            except errors.UnavailableError as exc:
                log.warning("task list failed, retrying", node=self.cfg.node_name,
                            error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        per_node: dict[str, list[resource.Resource]] = {n: [] for n in self.managers}
        route: dict[str, str] = {}
        for (node_name, key), obj in tasks.items():
            mine = reports.get((node_name, key))
            if mine is not None and mine[0] == obj.metadata.uid:
                obj.status = mine[1]
            per_node[node_name].append(obj)
            route[key] = node_name
        self._route = route
        for name, objs in per_node.items():
            self.managers[name].replace(objs)
        for (node_name, key), (uid, _, rev) in reports.items():
            manager = self.managers[node_name]
            self.writer.adopt(self.writer.report_key(manager, key), uid, rev)
            held = tasks.get((node_name, key))
            if held is None or held.metadata.uid != uid:
                self.writer.forget(manager, key, uid)  # its task is gone
        return revision

    def _decode_task(self, where: projections.NodeKey, value: bytes,
                     revision: int) -> resource.Resource | None:
        """A task projection of one of our nodes, or None (logged) if it cannot be read."""
        obj = decode_task(value, revision)
        if obj is None:
            self.undecodable += 1
            log.error("skipping a Task whose value cannot be read",
                      key=f"task/{where.namespace}/{where.name}", node=where.node)
            return None
        # The key is the truth about which object this is and whose it is.
        obj.metadata.namespace, obj.metadata.name = where.namespace, where.name
        if obj.spec.get("nodeName") != where.node:
            obj.spec = {**obj.spec, "nodeName": where.node}
        return obj

    async def _watch_tasks(self, revision: int) -> None:
        """Follow our nodes' task copies from ``revision`` (the start-up list's);
        ``shoal.store.watch`` resumes after disconnects and relists after compaction."""
        assert self.store is not None
        scope, _ = self._scope()
        async for events in watch.follow_prefix(self.store, scope, self._relist,
                                                revision=revision, what="task watch",
                                                node=self.cfg.node_name):
            for i, ev in enumerate(events):
                self._on_event(ev)
                if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)

    def _on_event(self, ev: etcd.RawEvent) -> None:
        where = projections.parse_node_key(self._nodes_prefix(), ev.key)
        if where is None or where.section != _TASKS or where.node not in self.managers:
            return  # another node's keys, secret and config copies
        key = f"{where.namespace}/{where.name}"
        manager = self.managers[where.node]
        known = self._route.get(key)
        if ev.deleted:
            if known == where.node:
                del self._route[key]
                manager.delete(key)
            return
        if known == where.node and manager.is_echo(key, ev.mod_revision):
            return  # already seen (a resumed watch)
        obj = self._decode_task(where, ev.value, ev.mod_revision)
        if obj is None:
            return
        if known is not None and known != where.node:
            # Assigned elsewhere now (the store deleted the old node's copy too).
            self.managers[known].delete(key)
        self._route[key] = where.node
        manager.upsert(obj)

    # --- health of the process itself ---

    async def _watch_lag(self) -> None:
        """Tick the heartbeat process (proof of life) and measure event-loop lag."""
        interval = 0.1
        while True:
            before = time.monotonic()
            if self.heartbeats is not None:
                self.heartbeats.tick()
            await asyncio.sleep(interval)
            lag = time.monotonic() - before - interval
            self.max_loop_lag = max(self.max_loop_lag, lag)
            if lag > LAG_WARNING:
                log.warning("event loop lagging; task handling is delayed",
                            node=self.cfg.node_name, lag=round(lag, 3))

    def stats(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for manager in self.managers.values():
            for state in manager.states().values():
                states[state] = states.get(state, 0) + 1
        return {"nodes": len(self.managers), "tasks": len(self._route), "states": states,
                "status_writes": self.writer.writes if self.writer else 0,
                "write_conflicts": self.writer.conflicts if self.writer else 0,
                "heartbeat_restarts": self.heartbeats.restarts if self.heartbeats else 0,
                "max_loop_lag_s": round(self.max_loop_lag, 3),
                "gc": gcpolicy.pauses(),
                "undecodable": self.undecodable, "timings": dict(self.timings)}


async def run_agent(etcd_url: str, prefix: str, node_name: str, runtime: str = "hollow",
                    count: int = 1, labels: dict[str, str] | None = None,
                    role: str = "worker", ttl: float = 3.0, **options: Any) -> None:
    """Run an agent until cancelled. ``options`` are the other AgentConfig fields
    (``address``, ``cpus``, ``memory``, ``hollow_start_delay``, ``fail_rate``, ``seed``,
    ``hollow_state``, ``shared_lease``, ``concurrency``, ``resync``, ``hostname``)."""
    cfg = AgentConfig(etcd_url=etcd_url, prefix=prefix, node_name=node_name, runtime=runtime,
                      count=count, labels=dict(labels or {}), role=role, heartbeat_ttl=ttl,
                      **options)
    await Agent(cfg).run()
