"""A real small cluster for the orchestration tests: etcd, a controller-manager process
running the built-in controllers, and hollow agents as processes of their own.

Every process talks to the session etcd under the test's private key prefix; logs go to
files in the test's temporary directory (printed when a test fails, see ``dump_logs``).
Waiting is always "poll until true or fail at a deadline" (``tests.helpers.eventually``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from shoal.crds import admission, kinds, resource
from shoal.crds import taskstates as ts
from shoal.store import client, errors
from tests.helpers import LoggedProcess, eventually

#: A controller-manager or agent process and its log.
Proc = LoggedProcess

REG = kinds.Registry.builtin()
SERVICES = REG.lookup("services")
TASKS = REG.lookup("tasks")
NODES = REG.lookup("nodes")

#: Heartbeat lease TTL the test agents use (seconds, etcd's minimum is about 2).
TTL = 2
MANAGER = ("import asyncio, sys\n"
           "from shoal.runtime import logging, manager\n"
           "from shoal.controllers import builtin\n"
           "logging.configure(json=True)\n"
           "asyncio.run(manager.run_manager(sys.argv[1], sys.argv[2],\n"
           "    builtin.controller_specs(), lease_ttl=2))\n")


class Cluster:
    """etcd (shared, private prefix) + processes started by the test."""

    def __init__(self, etcd_url: str, prefix: str, store: client.Store, workdir: Path) -> None:
        self.etcd_url = etcd_url
        self.prefix = prefix
        self.store = store
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.agents: dict[str, Proc] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, etcd_url: str, prefix: str, workdir: Path) -> AsyncIterator[Cluster]:
        store = await client.Store.connect(etcd_url, prefix=prefix)
        cluster = cls(etcd_url, prefix, store, workdir)
        try:
            yield cluster
        except BaseException:
            cluster.dump_logs()
            raise
        finally:
            await asyncio.gather(*(p.stop() for p in cluster.procs))
            await store.close()

    def dump_logs(self, lines: int = 40) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                tail = proc.log.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- {proc.name} ({proc.log}) ---", *tail, sep="\n")

    # --- processes ---

    def start_manager(self, name: str = "manager") -> Proc:
        proc = Proc(name, [sys.executable, "-c", MANAGER, self.etcd_url, self.prefix],
                    self.workdir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def start_agent(self, name: str, *, count: int = 1, labels: dict[str, str] | None = None,
                    ttl: int = TTL, extra: Iterable[str] = ()) -> Proc:
        argv = [sys.executable, "-m", "shoal.agent.main", "--etcd", self.etcd_url,
                "--prefix", self.prefix, "--name", name, "--runtime", "hollow",
                "--heartbeat-ttl", str(ttl), "--hollow-start-delay", "0.05",
                "--count", str(count), "--cpus", "4", "--memory", "8Gi", *extra]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        proc = Proc(f"agent-{name}", argv, self.workdir / f"agent-{name}.log")
        self.procs.append(proc)
        self.agents[name] = proc
        return proc

    @staticmethod
    def node_names(name: str, count: int = 1) -> list[str]:
        return [name] if count == 1 else [f"{name}-{i}" for i in range(count)]

    async def wait_ready(self, names: Iterable[str], timeout: float = 20.0) -> None:
        want = set(names)

        async def ready() -> bool:
            nodes, _ = await self.store.list(NODES)
            return want <= {n.name for n in nodes if n.status.get("state") == "ready"}
        await eventually(ready, timeout, what=f"nodes {sorted(want)} ready")

    # --- objects ---

    async def apply(self, name: str, spec: dict[str, Any],
                    namespace: str = "default") -> resource.Resource:
        """Create or update a Service as ``swctl apply`` would (admission, defaults)."""
        doc = {"apiVersion": "shoal.io/v1", "kind": "Service",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        admitted = admission.admit(doc, REG)
        while True:
            try:
                current = await self.store.get(SERVICES, name, namespace)
            except errors.NotFoundError:
                try:
                    return await self.store.create(SERVICES, admitted)
                except errors.AlreadyExistsError:
                    continue
            current.spec = admitted.spec
            try:
                return await self.store.update(SERVICES, current)
            except errors.ConflictError:
                continue

    async def scale(self, name: str, replicas: int, namespace: str = "default") -> None:
        while True:
            svc = await self.store.get(SERVICES, name, namespace)
            svc.spec["replicas"] = replicas
            try:
                await self.store.update(SERVICES, svc)
                return
            except errors.ConflictError:
                continue

    async def node(self, name: str) -> resource.Resource:
        return await self.store.get(NODES, name)

    async def set_availability(self, name: str, availability: str) -> None:
        while True:
            node = await self.store.get(NODES, name)
            node.spec["availability"] = availability
            try:
                await self.store.update(NODES, node)
                return
            except errors.ConflictError:
                continue

    async def tasks(self, service: str | None = None,
                    namespace: str = "default") -> list[resource.Resource]:
        selector = f"{ts.SERVICE_LABEL}={service}" if service else None
        tasks, _ = await self.store.list(TASKS, namespace, selector=selector)
        return tasks

    async def current(self, service: str) -> list[resource.Resource]:
        """Tasks of ``service`` still desired running."""
        return [t for t in await self.tasks(service) if ts.is_active_desired(t)]

    @staticmethod
    def per_node(tasks: Iterable[resource.Resource]) -> dict[str, int]:
        out: dict[str, int] = {}
        for task in tasks:
            if ts.is_active_desired(task) and ts.is_running(task):
                node = ts.node_name_of(task) or "?"
                out[node] = out.get(node, 0) + 1
        return out

    async def running_per_node(self, service: str) -> dict[str, int]:
        return self.per_node(await self.tasks(service))

    async def wait_running(self, service: str, count: int, timeout: float = 20.0, *,
                           avoid: Iterable[str] = ()) -> dict[str, int]:
        """Until exactly ``count`` tasks are desired running, all of them run, none on a
        node in ``avoid``; returns running tasks per node (from one consistent list)."""
        avoided = set(avoid)

        async def probe() -> list[dict[str, int]]:
            current = [t for t in await self.tasks(service) if ts.is_active_desired(t)]
            if len(current) != count or not all(ts.is_running(t) for t in current):
                return []
            per_node = self.per_node(current)
            return [] if avoided & set(per_node) else [per_node]
        found = await eventually(probe, timeout, what=f"{count} running tasks of {service}"
                                 + (f" off {sorted(avoided)}" if avoided else ""))
        return found[0]


def describe(tasks: Iterable[resource.Resource]) -> str:
    """One line per task, for assertion messages."""
    return "\n".join(
        f"{t.name} slot={t.spec.get('slot')} node={t.spec.get('nodeName')} "
        f"desired={t.spec.get('desiredState')} state={t.status.get('state')} "
        f"msg={t.status.get('message')!r}" for t in sorted(tasks, key=lambda t: t.name))


def decode_task(value: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(value)
    return data
