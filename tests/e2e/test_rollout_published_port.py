"""A port published on a running service answers: the update replaces its tasks.

Two namespace nodes with docker agents, the real controllers, real containers. A user
runs a web service, then adds ``ports: [{published: 8080, target: 80}]`` and applies
again with ``swctl apply -f``: apply must say converged only once the tasks that run
have joined the routing mesh, and the port must then answer on every node from outside
(before the fix, the old tasks kept running without an ingress address and the mesh
had no backend). The user's tasks are replaced one by one, as ``docker service update
--publish-add`` does. Then the image becomes ``shoal/busybox:2.0``, which no node has:
the update pauses and apply exits 1 with the rejection; reverting converges.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.store import etcd_server
from tests.e2e.netcluster import NETTOOL
from tests.e2e.netlab import Lab, have_netns_privileges
from tests.e2e.nscluster import NsCluster, remove_containers
from tests.helpers import eventually
from tests.integration.cli_support import Swctl

pytestmark = [pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2"),
              pytest.mark.timeout(240)]

HTTPD = ["sh", "-c", "hostname > /www/index.html && exec httpd -f -p 80 -h /www"]


def web(ports: list[dict[str, Any]] | None = None, image: str = "shoal/busybox") -> str:
    # monitor: Swarm's 5 s, waited out after each update's last batch, is not the point.
    spec: dict[str, Any] = {"replicas": 2, "template": {"image": image,
                                                          "command": HTTPD,
                                                          "stopGracePeriod": "1s"},
                            "updateConfig": {"monitor": "1s"}}
    if ports:
        spec["endpoint"] = {"ports": ports}
    return yaml.safe_dump({"apiVersion": "shoal.io/v1", "kind": "Service",
                           "metadata": {"name": "web"}, "spec": spec})


async def test_published_port_added_to_a_running_service_answers(
        etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path, lab: Lab,
        docker_client: Any) -> None:
    names: list[str] = []
    try:
        async with NsCluster.open_ns(etcd.url, prefix, tmp_path, lab, size=2) as c:
            names = c.names
            c.start_manager()
            for i in range(2):
                c.start_node_agent(i)
            await c.wait_ready(c.names, timeout=30)
            swctl = Swctl(c.etcd_url, c.prefix, c.workdir)
            path = swctl.write("web.yaml", web())
            # swctl apply -f web.yaml
            out = (await asyncio.to_thread(swctl, "apply", "-f", str(path),
                                           "--verify-window", "0.5", timeout=120)
                   ).stdout.splitlines()
            assert out[-1] == "verify: Service converged"
            old = {t.name for t in await c.running("web")}
            assert len(old) == 2

            # ports: [{published: 8080, target: 80}] added; swctl apply -f web.yaml
            swctl.write("web.yaml", web([{"published": 8080, "target": 80}]))
            out = (await asyncio.to_thread(swctl, "apply", "-f", str(path),
                                           "--verify-window", "0.5", timeout=120)
                   ).stdout.splitlines()
            assert out[0] == "service/web configured"
            assert "overall progress: 1 out of 2 tasks" in out
            assert out[-1] == "verify: Service converged"

            now = await c.running("web")
            assert len(now) == 2 and not {t.name for t in now} & old
            assert all(any(n.get("name") == "ingress" for n in t.spec.get("networks") or ())
                       for t in now)
            hostnames = {t.status["containerId"][:12] for t in now}

            # nc <node> 8080, from outside the cluster: every node answers, from a task.
            for node in c.nodes:
                async def answers(node: Any = node) -> list[str] | None:
                    # In a thread: the agents reach etcd through this loop's relay.
                    done = await asyncio.to_thread(
                        c.lab.exec, c.outside.ns, sys.executable, NETTOOL, "http",
                        str(node.underlay), "8080", "4", check=False, timeout=60)
                    got = done.stdout.split()
                    return got if got and set(got) <= hostnames else None
                await eventually(answers, timeout=30, interval=0.5,
                                 what=f"port 8080 answering on {node.underlay}")

            # The second case, with real docker: image shoal/busybox:2.0 (no such
            # image here) pauses the update and apply says why; reverting converges.
            swctl.write("web.yaml", web([{"published": 8080, "target": 80}],
                                        image="shoal/busybox:2.0"))
            bad = await asyncio.to_thread(swctl, "apply", "-f", str(path), "--verify-window",
                                          "0.5", expect=1, timeout=180)
            assert bad.stdout.splitlines()[0] == "service/web configured"
            assert "error: service/web: update paused due to failure of task web." in bad.stderr
            assert " rejected on node " in bad.stderr and "shoal/busybox:2.0" in bad.stderr
            kept = {t.name for t in await c.running("web")}
            assert len(kept) == 1 and kept < {t.name for t in now}  # one slot untouched

            swctl.write("web.yaml", web([{"published": 8080, "target": 80}]))
            out = (await asyncio.to_thread(swctl, "apply", "-f", str(path),
                                           "--verify-window", "0.5", timeout=120)
                   ).stdout.splitlines()
            assert out[0] == "service/web configured"
            assert out[-1] == "verify: Service converged"
            back = await c.running("web")
            assert len(back) == 2
            assert all(t.spec["template"]["image"] == "shoal/busybox" for t in back)
    finally:
        remove_containers(docker_client, names)
