"""A one-node Shoal cluster made the way a user makes one, ``swctl up -d --nodes 1
--runtime docker``, under a run's own names: the Shoal side of the comparison benchmarks
(bench/update.py, bench/stack.py).

Own names everywhere (etcd port and key prefix, node prefix, bridge, underlay, state
dir), so a benchmark never meets a test cluster or another run; ``stop`` is ``swctl
down``. The node is a network namespace with its agent; its containers run on the host's
shared dockerd, labelled ``shoal.io/node=<tag>-1``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import subprocess
from typing import Any

from bench.common import say
from shoal.crds import kinds
from shoal.store import client, etcd_server
from tests.e2e.upcluster import free_underlay
from tests.integration.cli_support import command

TASKS = kinds.Registry.builtin().lookup("tasks")


class ShoalUp:
    """``swctl up --nodes 1`` under the run's own names; ``swctl`` bound to it."""

    def __init__(self, tmp: pathlib.Path, tag: str, what: str) -> None:
        self.tmp = tmp
        self.tag = tag
        self.state_dir = tmp / "shoal"
        self.prefix = f"/bench-{what}-{tag}"
        self.port = etcd_server.free_port()
        self.env = dict(os.environ, SHOAL_PREFIX=self.prefix,
                        SHOAL_ETCD=f"http://127.0.0.1:{self.port}")
        self.store: client.Store | None = None
        self.up = False

    @property
    def node(self) -> str:
        """The one node's name, as its containers are labelled."""
        return f"{self.tag}-1"

    def swctl(self, *args: str, input: str | None = None, timeout: float = 300
              ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(command(*args), input=input, capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"swctl {' '.join(args)} exited {proc.returncode}:\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return proc

    def swctl_argv(self, *args: str) -> list[str]:
        """The command line of ``swctl ARGS`` (run it with ``self.env``)."""
        return command(*args)

    async def start(self) -> None:
        self.up = True
        await asyncio.to_thread(
            self.swctl, "up", "-d", "--nodes", "1", "--runtime", "docker", "--node-prefix",
            self.tag, "--bridge", f"sh{self.tag}", "--underlay", free_underlay(),
            "--etcd-port", str(self.port), "--state-dir", str(self.state_dir))
        self.store = await client.Store.connect(self.env["SHOAL_ETCD"], prefix=self.prefix)

    async def tasks(self, namespace: str = "default", selector: str | None = None
                    ) -> list[Any]:
        assert self.store is not None
        found, _ = await self.store.list(TASKS, namespace, selector=selector)
        return found

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.close()
        if self.up:
            proc = await asyncio.to_thread(
                subprocess.run, command("down", "--state-dir", str(self.state_dir),
                                        "--timeout", "5"),
                capture_output=True, text=True, env=self.env, timeout=300)
            if proc.returncode != 0:
                say(f"swctl down failed:\n{proc.stdout}\n{proc.stderr}")
            # etcd's data (60+ MB a run; dozens of runs filled the disk once); logs stay.
            shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
