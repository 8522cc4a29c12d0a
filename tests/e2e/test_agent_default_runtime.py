"""``swctl agent`` with no ``--runtime`` on a machine where dockerd answers runs real
containers (issue #12, item 4): the node reports ``docker`` in ``node ls -o wide`` and the
service's task is a container dockerd runs. tests/integration/test_cli_agent_runtime.py
covers the fall-back to the process driver when there is no dockerd.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any, TypeVar

import yaml

from shoal.store import etcd_server
from tests.helpers import eventually_sync as eventually
from tests.helpers import stop_processes
from tests.integration.cli_support import Swctl, command

T = TypeVar("T")




def test_swctl_agent_default_runs_containers(etcd: etcd_server.EtcdServer, tmp_path: Path,
                                             docker_client: Any, docker_node: str) -> None:
    swctl = Swctl(etcd.url, f"/t-{uuid.uuid4().hex[:12]}", tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, args in (
                ("manager", ["controller-manager"]),
                # `swctl agent --name joiner` (joiner = a unique node name; the rest keeps the
                # test off the host's shared ports and task networking)
                ("agent", ["agent", "--name", docker_node, "--state-dir",
                           str(tmp_path / "state"), "--logs-port", "0", "--dataplane",
                           "none", "--heartbeat-ttl", "2"])):
            with open(tmp_path / f"{name}.log", "wb") as out:
                procs.append(subprocess.Popen(command(*args), env=swctl.env, cwd=tmp_path,
                                              stdout=out, stderr=subprocess.STDOUT))

        def node_runtime() -> str | None:
            lines = swctl("node", "ls", "-o", "wide").stdout.splitlines()
            header = lines[0].split() if lines else []
            for line in lines[1:]:
                row = [t for t in line.split() if t != "*"]
                if row[1] == docker_node and row[2] == "ready":
                    return row[header.index("RUNTIME")]
            return None

        assert eventually(node_runtime, what="node ready") == "docker"
        swctl.write("web.yaml", """
            apiVersion: shoal.io/v1
            kind: Service
            metadata: {name: web}
            spec:
              template: {image: shoal/busybox, command: [sleep, "300"], stopGracePeriod: 1s}
            """)
        assert swctl("apply", "-f", "web.yaml", "--verify-window", "0.5",
                     timeout=90).stdout.splitlines()[-1] == "verify: Service converged"
        task = yaml.safe_load(swctl("get", "tasks", "-o", "yaml").stdout)["items"][0]
        container = docker_client.containers.get(task["status"]["containerId"])
        assert container.status == "running"  # a real container, not a hollow promise
        assert container.attrs["Config"]["Cmd"] == ["sleep", "300"]
        swctl("delete", "service/web")
        eventually(lambda: not docker_client.containers.list(
            filters={"id": container.id}), what="container stopped")
    finally:
        stop_processes(procs, timeout=15)
