"""Hollow agents as real OS processes for the agent tests, plus what the tests inspect.

Each agent is ``python -m shoal.agent.main`` (exactly what ``swctl agent`` runs) against
the session etcd under the test's private prefix, with its log in the test's temporary
directory; the log tail is printed when a test fails. Tasks are written straight into
etcd, already assigned, the way the scheduler commits them. Agents report task status
under their node's keys and read secrets and configs from their node's copies; a
controller-manager running only the nodes, fold and distributor controllers does the
rest, as in a cluster (the fold creates the Node from its agent's report). Every wait
polls with a deadline (``tests.helpers.eventually``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from shoal.crds import kinds, resource
from shoal.store import client, errors, watch
from tests.helpers import LoggedProcess, eventually

#: An agent process and its log (the tests' name for the shared helper).
AgentProc = LoggedProcess

REG = kinds.Registry.builtin()
TASKS = REG.lookup("tasks")
NODES = REG.lookup("nodes")
ORDER = ("new", "pending", "assigned", "accepted", "preparing", "starting", "running",
         "complete", "failed", "shutdown", "rejected", "orphaned")
TTL = 2  # etcd's minimum lease TTL is about 2 s


class AgentCluster:
    """The session etcd under a private prefix, and the agents a test starts."""

    def __init__(self, etcd_url: str, prefix: str, store: client.Store, workdir: Path) -> None:
        self.etcd_url = etcd_url
        self.prefix = prefix
        self.store = store
        self.workdir = workdir
        self.agents: list[AgentProc] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, etcd_url: str, prefix: str,
                   workdir: Path) -> AsyncIterator[AgentCluster]:
        store = await client.Store.connect(etcd_url, prefix=prefix)
        cluster = cls(etcd_url, prefix, store, workdir)
        fold = AgentProc("fold", [sys.executable, "-m", "shoal.cli", "controller-manager",
                                  "--etcd", etcd_url, "--prefix", prefix,
                                  "--controllers", "nodes,fold,distributor"],
                       workdir / "fold.log")
        try:
            yield cluster
        except BaseException:
            for agent in [*cluster.agents, fold]:
                tail = agent.text().splitlines()[-40:]
                print(f"--- {agent.name} {agent.pid} ({agent.log}) ---", *tail, sep="\n")
            raise
        finally:
            await asyncio.gather(*(a.stop() for a in [*cluster.agents, fold]))
            await store.close()

    def start_agent(self, name: str, *args: str, ttl: int = TTL) -> AgentProc:
        argv = [sys.executable, "-m", "shoal.agent.main", "--etcd", self.etcd_url,
                "--prefix", self.prefix, "--name", name, "--runtime", "hollow",
                "--heartbeat-ttl", str(ttl),
                "--hollow-start-delay", "0.05", "--log-format", "console", *args]
        log = self.workdir / f"agent-{name}-{len(self.agents)}.log"
        agent = AgentProc(f"agent-{log.stem}", argv, log)
        self.agents.append(agent)
        return agent

    # --- nodes and heartbeats ---

    async def wait_ready(self, names: Iterable[str], timeout: float = 20.0) -> None:
        want = set(names)

        async def ready() -> bool:
            nodes, _ = await self.store.list(NODES)
            beats = await self.heartbeats()
            up = {n.name for n in nodes if n.status.get("state") == "ready"}
            return want <= up and want <= set(beats)

        await eventually(ready, timeout, what=f"nodes {sorted(want)} ready with heartbeats")

    async def heartbeats(self) -> dict[str, Any]:
        """Heartbeat keys by node name: ``(value, lease)``."""
        prefix = self.store.raw_key("heartbeats") + b"/"
        kvs, _ = await self.store.raw_list(prefix)
        return {kv.key[len(prefix):].decode(): (json.loads(kv.value), kv.lease) for kv in kvs}

    # --- tasks ---

    async def create_task(self, name: str, node: str, template: Any = None,
                          desired: str = "running", namespace: str = "default",
                          **spec: Any) -> resource.Resource:
        body: dict[str, Any] = {"serviceName": name.split(".")[0], "slot": 1,
                                "nodeName": node, "desiredState": desired, **spec}
        if template is not None:
            body["template"] = template
        obj = resource.new("Task", name, namespace, spec=body,
                           labels={"shoal.io/service": name.split(".")[0]})
        obj.status = {"state": "assigned", "message": "scheduled"}
        return await self.store.create(TASKS, obj)

    async def task(self, name: str, namespace: str = "default") -> resource.Resource:
        return await self.store.get(TASKS, name, namespace)

    async def wait_state(self, name: str, state: str, timeout: float = 10.0,
                         namespace: str = "default") -> resource.Resource:
        async def probe() -> resource.Resource | None:
            try:
                obj = await self.task(name, namespace)
            except (errors.NotFoundError, errors.CorruptObjectError):
                return None
            return obj if obj.status.get("state") == state else None

        found = await eventually(probe, timeout, what=f"task {name} {state}")
        assert found is not None
        return found

    async def set_desired(self, name: str, desired: str, namespace: str = "default") -> None:
        while True:
            obj = await self.task(name, namespace)
            obj.spec["desiredState"] = desired
            try:
                await self.store.update(TASKS, obj)
                return
            except errors.ConflictError:
                continue


class StateRecorder:
    """Every ``status.state`` each task takes, in order, as a watch delivers them."""

    def __init__(self, store: client.Store) -> None:
        self.store = store
        self.seen: dict[str, list[str]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StateRecorder:
        _, revision = await self.store.list(TASKS)
        self._task = asyncio.create_task(self._run(revision))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self, revision: int) -> None:
        async for event in watch.watch_kind(self.store, TASKS, since_revision=revision):
            if event.type in (watch.ADDED, watch.MODIFIED) and event.obj is not None:
                states = self.seen.setdefault(event.obj.name, [])
                state = str(event.obj.status.get("state"))
                if not states or states[-1] != state:
                    states.append(state)


def assert_forward_only(states: list[str]) -> None:
    ranks = [ORDER.index(s) for s in states]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks), (
        f"task states moved backwards or repeated: {states}")


def hollow_workloads(path: Path) -> dict[str, dict[str, Any]]:
    """The workloads a hollow state journal holds, by task uid (read-only replay).

    Each carries ``starts``: how many times it was started since the journal was last
    compacted (an agent start compacts it) — more than one would be a duplicate.
    """
    live: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return live
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["op"] == "start":
            starts = live.get(entry["w"]["uid"], {}).get("starts", 0)
            live[entry["w"]["uid"]] = {**entry["w"], "starts": starts + 1}
        elif entry["op"] == "stop" and entry["uid"] in live:
            live[entry["uid"]]["state"] = "exited"
        elif entry["op"] == "remove":
            live.pop(entry["uid"], None)
    return live
