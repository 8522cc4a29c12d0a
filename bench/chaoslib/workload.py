"""The workload: what users do to the cluster while it is being broken.

Services are created with ``swctl apply`` (a mix of update orders and parallelism), then
a seeded loop runs, one ``swctl`` process at a time as a user's shell would: scales
(``swctl scale``), rolling updates (``swctl service update --image`` / ``--env-add``),
a drain of a node and its activation, a stack deploy and its re-deploy with a new image,
and short-lived services created and deleted (what the lost/resurrected checks follow).
Commands fail while etcd has no leader for a moment; a failed command is retried and
counted, never a violation: what counts is what etcd ends up holding.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

import structlog

from bench.chaoslib.cluster import Cluster
from bench.chaoslib.invariants import Checker

log = structlog.get_logger("bench.chaos.workload")

SERVICE = """\
apiVersion: shoal.io/v1
kind: Service
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  template: {{image: "shoal/busybox:1", command: [busybox, httpd, -f, -p, "8080"]}}
  updateConfig: {{parallelism: {parallelism}, order: {order}, monitor: 0.5s}}
"""
#: name -> (replicas, parallelism, order)
SERVICES = {"web": (4, 1, "stop-first"), "api": (3, 2, "stop-first"),
            "cache": (3, 1, "start-first"), "batch": (5, 0, "stop-first")}
STACK = """\
version: "3.8"
services:
  front:
    image: shoal/busybox:{tag}
    command: [busybox, httpd, -f, -p, "8080"]
    deploy: {{replicas: 2, update_config: {{parallelism: 1, order: start-first}}}}
"""
OPS = ("scale", "scale", "image", "image", "env", "drain", "ephemeral", "stack")


class Workload:
    def __init__(self, cluster: Cluster, checker: Checker, seed: int,
                 gap: tuple[float, float] = (1.0, 4.0)) -> None:
        self.cluster = cluster
        self.checker = checker
        self.rng = random.Random(seed ^ 0x5EED)
        self.gap = gap
        self.ops: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()
        self.last_op = 0.0
        self.drained: str | None = None
        self.ephemeral: list[str] = []
        self._n = 0

    async def swctl(self, *args: str, retries: int = 3, input: str | None = None) -> bool:
        for _ in range(retries):
            proc = await asyncio.create_subprocess_exec(
                *self.cluster.swctl_argv(*args), env=self.cluster.env, cwd=self.cluster.workdir,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(
                    proc.communicate(None if input is None else input.encode()), 90)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                err = b"timed out"
            if proc.returncode == 0:
                return True
            self.failed[args[0]] += 1
            log.warning("swctl failed", args=args, code=proc.returncode,
                        stderr=err.decode(errors="replace")[-500:])
            await asyncio.sleep(1.0)
        return False

    async def apply(self, name: str, text: str) -> bool:
        path = self.cluster.workdir / f"{name}.yaml"
        path.write_text(text)
        return await self.swctl("apply", "-f", str(path), "--detach")

    async def setup(self, stack: bool = True) -> None:
        for name, (replicas, parallelism, order) in SERVICES.items():
            text = SERVICE.format(name=name, replicas=replicas, parallelism=parallelism,
                                  order=order)
            if not await self.apply(name, text):
                raise RuntimeError(f"could not create service {name}")
            self.checker.owned.add(self.checker.service_key(name))
        if stack:
            await self.deploy_stack()

    async def deploy_stack(self) -> None:
        self._n += 1
        path = self.cluster.workdir / "stack.yml"
        path.write_text(STACK.format(tag=self._n))
        await self.swctl("stack", "deploy", "-c", str(path), "-d", "chaos")

    async def run(self, until: float, stack: bool = True) -> None:
        while time.monotonic() < until:
            op = self.rng.choice(OPS if stack else OPS[:-1])
            name = self.rng.choice(sorted(SERVICES))
            self._n += 1
            self.ops[op] += 1
            if op == "scale":
                await self.swctl("scale", f"{name}={self.rng.randint(1, 7)}", "-d")
            elif op == "image":
                await self.swctl("service", "update", "--image",
                                 f"shoal/busybox:{self._n}", "-d", name)
            elif op == "env":
                await self.swctl("service", "update", "--env-add", f"CHAOS={self._n}",
                                 "-d", name)
            elif op == "drain":
                await self.drain_or_activate()
            elif op == "ephemeral":
                await self.ephemeral_step()
            elif op == "stack":
                await self.deploy_stack()
            self.last_op = time.monotonic()
            await asyncio.sleep(self.rng.uniform(*self.gap))

    async def drain_or_activate(self) -> None:
        if self.drained is None:
            node = self.rng.choice(self.cluster.node_names)
            self.checker.disturb(True, "drain")
            if await self.swctl("node", "drain", node):
                self.drained = node
            else:
                self.checker.disturb(False, "drain")
        else:
            if await self.swctl("node", "activate", self.drained):
                self.drained = None
                self.checker.disturb(False, "drain")

    async def ephemeral_step(self) -> None:
        """Create a short-lived service, or delete the oldest one."""
        if self.ephemeral and (len(self.ephemeral) > 1 or self.rng.random() < 0.5):
            name = self.ephemeral.pop(0)
            self.checker.owned.discard(self.checker.service_key(name))  # before: it may land
            await self.swctl("delete", "service", name, "--ignore-not-found")
            return
        name = f"tmp{self._n}"
        text = SERVICE.format(name=name, replicas=2, parallelism=1, order="stop-first")
        if await self.apply(name, text):
            self.ephemeral.append(name)
            self.checker.owned.add(self.checker.service_key(name))

    async def finish(self) -> None:
        """Put the cluster back in a state that can converge: the drained node active."""
        if self.drained is not None:
            await self.swctl("node", "activate", self.drained, retries=10)
            self.drained = None
            self.last_op = time.monotonic()
        self.checker.disturb(False, "drain")
