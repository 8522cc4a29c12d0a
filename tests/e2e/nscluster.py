"""A real Shoal cluster whose nodes are network namespaces: the harness of the networking
end-to-end tests.

* Nodes are lab namespaces on one underlay bridge (``netlab``), each running its own
  agent process (``ip netns exec NODE python -m shoal.agent.main --runtime docker``);
  one dockerd serves them all, as on a real host the agent, not docker, owns task
  networking. A last lab namespace on the underlay, with no agent, is the outside
  client of published ports.
* etcd is the session's, on the host's loopback. Each node reaches it on its *own*
  loopback, 127.0.0.1:<etcd port>, through :class:`EtcdRelay`: a listener created inside
  the node's namespace whose connections the test process forwards to etcd. So nothing
  is added to the host's namespace (no veth, no route), and cutting a node's underlay
  link would not cut its etcd.
* The controller-manager (all built-in controllers) runs as a host process, as in the
  orchestration tests (``orchestration_support``), whose object helpers are reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from pyroute2.netns import create_socket

from shoal.agent.exec.executor import LABEL_NODE
from shoal.crds import resource
from shoal.store import client, etcd
from tests.e2e.netcluster import NETTOOL
from tests.e2e.netlab import Lab, Node, sh
from tests.integration.orchestration_support import Cluster, Proc

# Heartbeat TTL of the agents: long enough that an agent restarted on purpose is back
# before its node is declared down (its tasks would then be replaced elsewhere).
TTL = 10


class EtcdRelay:
    """Forwards 127.0.0.1:<port> inside given namespaces to etcd on the host's loopback.

    One asyncio loop on a thread of the test process; each listening socket is created
    in its namespace (pyroute2's ``create_socket``), and connections to etcd are made
    from the host namespace, where the thread lives."""

    def __init__(self, etcd_url: str) -> None:
        self.host, self.port = etcd.parse_url(etcd_url)
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="etcd-relay")
        self._thread.start()

    def add(self, netns_path: str) -> None:
        sock = create_socket(netns_path, flags=0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.setblocking(False)
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, sock=sock), self.loop)
        self._servers.append(future.result(10))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class NsCluster(Cluster):
    """``orchestration_support.Cluster`` whose agents are docker agents in node
    namespaces (see the module docstring)."""

    def __init__(self, etcd_url: str, prefix: str, store: client.Store, workdir: Path,
                 lab: Lab, size: int) -> None:
        super().__init__(etcd_url, prefix, store, workdir)
        self.lab = lab
        self.nodes: list[Node] = [lab.node() for _ in range(size)]
        self.outside = lab.node()  # on the underlay, no agent: a client of the mesh
        self.names = [f"{lab.prefix}-n{i + 1}" for i in range(size)]
        self.relay = EtcdRelay(etcd_url)
        for n in self.nodes:
            self.relay.add(lab.path(n.ns))

    @classmethod
    @contextlib.asynccontextmanager
    async def open_ns(cls, etcd_url: str, prefix: str, workdir: Path, lab: Lab,
                      size: int = 3) -> AsyncIterator[NsCluster]:
        store = await client.Store.connect(etcd_url, prefix=prefix)
        cluster = cls(etcd_url, prefix, store, workdir, lab, size)
        try:
            yield cluster
        except BaseException:
            cluster.dump_logs(60)
            raise
        finally:
            await asyncio.gather(*(p.stop() for p in cluster.procs))
            cluster.relay.close()
            await store.close()

    def start_node_agent(self, i: int) -> Proc:
        name, node = self.names[i], self.nodes[i]
        argv = ["ip", "netns", "exec", node.ns, sys.executable, "-m", "shoal.agent.main",
                "--etcd", f"http://127.0.0.1:{self.relay.port}", "--prefix", self.prefix,
                "--name", name, "--runtime", "docker", "--address", str(node.underlay),
                "--label", f"node=n{i + 1}", "--heartbeat-ttl", str(TTL),
                "--state-dir", str(self.workdir / "state"), "--logs-port", "off",
                "--log-format", "json", "--cpus", "4", "--memory", "8Gi"]
        log = self.workdir / f"agent-{name}.log"
        proc = Proc(f"agent-{name}", argv, log)
        self.procs.append(proc)
        self.agents[name] = proc
        return proc

    def log_lines(self, i: int, event: str) -> list[dict[str, Any]]:
        """JSON log lines of node ``i``'s agent(s) whose event is ``event``."""
        out = []
        path = self.workdir / f"agent-{self.names[i]}.log"
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    out.append(entry)
        return out

    # --- looking into tasks ---

    async def running(self, service: str) -> list[resource.Resource]:
        return [t for t in await self.current(service) if t.status.get("state") == "running"]

    @staticmethod
    def address(task: resource.Resource, network: str) -> str:
        for entry in task.spec.get("networks") or ():
            if entry.get("name") == network:
                return str(entry["addresses"][0]).split("/")[0]
        raise AssertionError(f"task {task.name} has no address on {network}")

    def nettool(self, pid: int, *args: str, timeout: float = 60) -> list[str]:
        """Run nettool inside a container's network namespace (the test's Python)."""
        out = sh("nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, NETTOOL, *args,
                 timeout=timeout).stdout
        return out.splitlines()

    def hold(self, pid: int, host: str, port: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable,
                                 NETTOOL, "hold", host, str(port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "connected"
        return proc

    @staticmethod
    def exchange(proc: subprocess.Popen[str], text: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    def shoal_links(self) -> dict[str, list[str]]:
        """Shoal's links (bridges, VXLANs, veths) per node namespace."""
        out = {}
        for name, n in zip(self.names, self.nodes, strict=True):
            links = sh("ip", "-n", n.ns, "-br", "link").stdout.split("\n")
            out[name] = sorted(ln.split()[0].split("@")[0] for ln in links
                               if ln.startswith(("shb-", "shv-", "sht")))
        return out

    def nft_tables(self) -> dict[str, str]:
        return {name: sh("ip", "netns", "exec", n.ns, "nft", "list", "tables").stdout.strip()
                for name, n in zip(self.names, self.nodes, strict=True)}


def remove_containers(docker_client: Any, nodes: Iterator[str] | list[str]) -> None:
    for node in nodes:
        for container in docker_client.containers.list(
                all=True, filters={"label": f"{LABEL_NODE}={node}"}):
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
