"""A start-first rolling update of a healthy service loses no request (issue 13).

Two namespace nodes with docker agents, the real controllers, real containers. ``web``
runs four replicas of ``httpd`` from ``shoal/busybox:v1`` on an overlay network, behind
its VIP and a published port, with a health check and ``updateConfig: {order:
start-first}``; its containers wait a second before listening, so a task that were
balanced before it is healthy would refuse connections. While three clients send
requests one after another — a container on the overlay network through the VIP, a
machine outside the cluster through the routing mesh, and a process on a node through
``127.0.0.1:8080`` — the user runs ``swctl service update --image shoal/busybox:v2 web``,
which replaces every task. No request may fail; the clients see ``v1`` answer, then
``v2``.

What makes this hold (docs/networking.md): a task is a backend only once its agent
reports it running, which with a health check means healthy; a task told to shut down
leaves its node's balancer, and its agent waits the drain period (``--drain``) before
stopping it, so every other node has taken it out of its balancer too and the
connections in flight have finished.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.agent.docker.image import ensure_variant_image
from shoal.crds import kinds
from shoal.store import etcd_server
from tests.e2e.netcluster import NETTOOL
from tests.e2e.netlab import Lab, have_netns_privileges
from tests.e2e.nscluster import NsCluster, remove_containers
from tests.helpers import eventually
from tests.integration.cli_support import Swctl

pytestmark = [pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2"),
              pytest.mark.timeout(300)]

REG = kinds.Registry.builtin()
V1, V2 = "shoal/busybox:v1", "shoal/busybox:v2"
REPLICAS = 4
# Listens a second after it starts (only the health check tells when it answers), and
# ends the moment it is sent SIGTERM, as many servers do: no grace period hides a
# backend that is still balanced when it stops.
HTTPD = ["sh", "-c", "trap 'exit 0' TERM; hostname > /www/index.html; sleep 1; "
                     "httpd -f -p 80 -h /www & wait"]
HEALTH = {"test": ["CMD-SHELL", "echo | nc -w 1 127.0.0.1 80 > /dev/null"],
          "interval": "300ms", "timeout": "1s", "retries": 3, "startPeriod": "10s"}


def manifests() -> str:
    network = {"apiVersion": "shoal.io/v1", "kind": "Network", "metadata": {"name": "appnet"},
               "spec": {}}
    web = {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"replicas": REPLICAS, "networks": ["appnet"],
                    "endpoint": {"ports": [{"published": 8080, "target": 80}]},
                    "updateConfig": {"parallelism": 1, "order": "start-first",
                                     "monitor": "1s"},
                    "template": {"image": V1, "command": HTTPD, "stopGracePeriod": "2s",
                                 "healthcheck": HEALTH}}}
    client = {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": "client"},
              "spec": {"replicas": 1, "networks": ["appnet"],
                       "placement": {"constraints": ["node.labels.node==n1"]},
                       "template": {"image": V1, "command": ["sleep", "3600"],
                                    "stopGracePeriod": "1s"}}}
    return yaml.safe_dump_all([network, web, client])


class Load:
    """``nettool load HOST PORT /variant`` run under ``prefix`` (``ip netns exec NS``,
    ``nsenter --net=...``) until :meth:`finish`."""

    def __init__(self, what: str, prefix: list[str], host: str, port: int) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, NETTOOL, "load", host, str(port), "/variant"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def started(self) -> None:
        """Returns once the client has had its first reply."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "started", (self.what, line)

    def finish(self) -> dict[str, Any]:
        out, _ = self.proc.communicate("stop\n", timeout=30)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        print(f"{self.what}: {result['ok'] + result['failed']} requests, "
              f"{result['failed']} failed, replies {result['bodies']}, "
              f"in {result['seconds']} s; first failures {result['failures']}")
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def test_start_first_update_loses_no_request(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path, lab: Lab,
        docker_client: Any) -> None:
    for image, variant in ((V1, "v1"), (V2, "v2")):
        await asyncio.to_thread(ensure_variant_image, docker_client, image, variant)
    names: list[str] = []
    loads: list[Load] = []
    try:
        async with NsCluster.open_ns(etcd.url, prefix, tmp_path, lab, size=2) as c:
            names = c.names
            c.start_manager()
            for i in range(2):
                c.start_node_agent(i)
            await c.wait_ready(c.names, timeout=30)
            swctl = Swctl(c.etcd_url, c.prefix, c.workdir)
            path = swctl.write("web.yaml", manifests())
            await asyncio.to_thread(swctl, "apply", "-f", str(path), "--verify-window", "0.5",
                                    timeout=120)

            async def all_running() -> bool:
                return (len(await c.running("web")) == REPLICAS
                        and len(await c.running("client")) == 1)
            await eventually(all_running, timeout=60, interval=0.2, what="web and client running")
            old = await c.running("web")
            assert {t.spec["nodeName"] for t in old} == set(c.names)  # both nodes serve
            (client_task,) = await c.running("client")
            pid = docker_client.containers.get(
                client_task.status["containerId"]).attrs["State"]["Pid"]
            web = await c.store.get(REG.lookup("services"), "web", "default")
            vip = next(v["address"] for v in web.status["endpoint"]["virtualIPs"]
                       if v["network"] == "appnet").split("/")[0]

            # Three clients, one after another each, all the time.
            loads = [
                Load("VIP from a container on appnet",
                     ["nsenter", f"--net=/proc/{pid}/ns/net"], vip, 80),
                Load("published port from outside",
                     ["ip", "netns", "exec", c.outside.ns], str(c.nodes[1].underlay), 8080),
                Load("published port on 127.0.0.1 of a node",
                     ["ip", "netns", "exec", c.nodes[0].ns], "127.0.0.1", 8080)]
            for load in loads:
                await asyncio.to_thread(load.started)

            # swctl service update --image shoal/busybox:v2 web
            out = (await asyncio.to_thread(swctl, "service", "update", "--image", V2, "web",
                                           "--verify-window", "0.5", timeout=180)
                   ).stdout.splitlines()
            assert out[0] == "service/web configured"
            assert out[-1] == "verify: Service converged"
            new = await c.running("web")
            assert len(new) == REPLICAS
            assert all(t.spec["template"]["image"] == V2 for t in new)
            assert not {t.name for t in new} & {t.name for t in old}  # every task replaced
            results = [await asyncio.to_thread(load.finish) for load in loads]
            for load, result in zip(loads, results, strict=True):
                assert result["failed"] == 0, (load.what, result)
                assert set(result["bodies"]) == {"v1", "v2"}, (load.what, result)
    finally:
        for load in loads:
            load.kill()
        remove_containers(docker_client, names)

