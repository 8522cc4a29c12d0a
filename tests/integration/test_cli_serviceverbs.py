"""Docker's imperative verbs — ``swctl service create|update|inspect|rm`` — write the same
Service as ``apply``, held to the same admission, and follow the rollout like apply.

Real etcd, a real ``swctl controller-manager`` and a real hollow agent with three nodes,
each a separate process (as test_cli_rollout).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import IO, Any

import pytest
import yaml

from shoal.store import etcd_server
from tests.helpers import eventually_sync as eventually
from tests.helpers import stop_processes
from tests.integration.cli_support import Swctl, command

VERIFY = ("--verify-window", "0.3")


@pytest.fixture(scope="module")
def swctl(etcd: etcd_server.EtcdServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swctl]:
    cwd = tmp_path_factory.mktemp("serviceverbs")
    cli = Swctl(etcd.url, f"/t-{uuid.uuid4().hex[:12]}", cwd)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    for name, args in (("manager", ["controller-manager"]),
                       ("agent", ["agent", "--runtime", "hollow", "--count", "3", "--name",
                                  "n", "--hollow-start-delay", "0.2"])):
        log = open(cwd / f"{name}.log", "ab")  # closed below
        logs.append(log)
        procs.append(subprocess.Popen(command(*args), env=cli.env, cwd=cwd, stdout=log,
                                      stderr=subprocess.STDOUT))
    try:
        def ready() -> bool:
            rows = cli("node", "ls").stdout.splitlines()[1:]
            return sum("ready" in row.split() for row in rows) >= 3
        eventually(ready, 20, "3 hollow nodes ready")
        yield cli
    finally:
        stop_processes(procs, timeout=10)
        for log in logs:
            log.close()


def running_images(swctl: Swctl, service: str) -> dict[str, str]:
    """Task name -> image of the service's tasks desired and observed running."""
    items = json.loads(swctl("get", "tasks", "-o", "json").stdout)["items"]
    return {t["metadata"]["name"]: t["spec"]["template"]["image"] for t in items
            if t["spec"]["serviceName"] == service and t["spec"]["desiredState"] == "running"
            and t["status"].get("state") == "running"}


def stored(swctl: Swctl, name: str) -> dict[str, Any]:
    data = yaml.safe_load(swctl("get", f"service/{name}", "-o", "yaml").stdout)
    assert isinstance(data, dict)
    return data


def test_service_create_converges_and_writes_the_fields(swctl: Swctl) -> None:
    # swctl service create --name web --replicas 2 -p 8080:80 shoal/busybox httpd -f -p 80
    out = swctl("service", "create", "--name", "web", "--replicas", "2", "-p", "8080:80",
                *VERIFY, "shoal/busybox", "httpd", "-f", "-p", "80", timeout=90).stdout
    lines = out.splitlines()
    assert lines[0] == "service/web created"
    assert "overall progress: 2 out of 2 tasks" in lines
    assert lines[-1] == "verify: Service converged"
    assert sorted(running_images(swctl, "web").values()) == ["shoal/busybox"] * 2

    # swctl get service/web -o yaml
    spec = stored(swctl, "web")["spec"]
    assert spec["replicas"] == 2
    assert spec["template"]["image"] == "shoal/busybox"
    assert spec["template"]["command"] == ["httpd", "-f", "-p", "80"]
    assert spec["endpoint"]["ports"] == [{"published": 8080, "target": 80, "protocol": "tcp",
                                          "mode": "ingress"}]
    assert spec["updateConfig"]["parallelism"] == 1  # admission's defaults, as apply's

    # Creating it again is refused, naming the verb that changes it.
    err = swctl("service", "create", "--name", "web", "-d", "shoal/busybox", expect=1).stderr
    assert err == ("error: service web already exists in namespace default: change it with "
                   "swctl service update ... web, or remove it first with swctl service rm "
                   "web\n")

    # The published port is apply's rule too: another service cannot take it.
    err = swctl("service", "create", "--name", "other", "-p", "8080:81", "-d",
                "shoal/busybox", expect=1).stderr
    assert "spec.endpoint.ports[0].published: port 8080/tcp is already published by " \
           "service default/web" in err
    swctl("get", "service/other", expect=1)

    pretty = swctl("service", "inspect", "--pretty", "web").stdout
    assert "Service Mode:           Replicated" in pretty
    assert " PublishedPort = 8080" in pretty

    # swctl service rm web
    # (its tasks are stopped first: the orchestrator's finalizer, as with delete)
    assert swctl("service", "rm", "web").stdout in (
        "service/web deleted\n",
        "service/web deletion requested (waiting for finalizers: shoal.io/tasks)\n")
    eventually(lambda: swctl("get", "service/web", expect=None).returncode == 1, 20,
               "service/web gone")
    assert running_images(swctl, "web") == {}


def test_service_update_rolls_out_refuses_bad_flags_and_diff_shows_the_drift(
        swctl: Swctl) -> None:
    path = swctl.write("api.yaml", """
        apiVersion: shoal.io/v1
        kind: Service
        metadata: {name: api}
        spec:
          replicas: 3
          template: {image: "shoal/busybox", command: [httpd, -f, -p, "80"]}
          updateConfig: {monitor: 0.5s}  # not Swarm's 5 s: the update converges sooner
        """)
    swctl("apply", "-f", str(path), *VERIFY, timeout=90)
    before = running_images(swctl, "api")
    assert sorted(before.values()) == ["shoal/busybox"] * 3
    assert swctl("diff", "-f", str(path)).stdout == ""

    # swctl service update --image shoal/busybox:2.0 api
    out = swctl("service", "update", *VERIFY, "--image", "shoal/busybox:2.0", "api",
                timeout=90).stdout.splitlines()
    assert out[0] == "service/api configured"
    progress = [line for line in out if line.startswith("overall progress:")]
    assert progress[-1] == "overall progress: 3 out of 3 tasks"
    assert out[-1] == "verify: Service converged"
    after = running_images(swctl, "api")
    assert sorted(after.values()) == ["shoal/busybox:2.0"] * 3
    assert not set(after) & set(before)  # replaced, not relabelled

    # swctl service update --constraint-add node.role==boss api: admission's message,
    # and nothing changes.
    version = stored(swctl, "api")["metadata"]["resourceVersion"]
    err = swctl("service", "update", "--constraint-add", "node.role==boss", "api",
                expect=1).stderr
    first, last = err.splitlines()
    assert first.startswith('error: spec.placement.constraints[0]: invalid constraint '
                            '"node.role==boss": node.role is manager or worker (services/')
    assert first.endswith(", from the flags of swctl service update)")
    assert last == "error: nothing was changed: fix the flags and run swctl service update " \
                   "again"
    assert stored(swctl, "api")["metadata"]["resourceVersion"] == version

    # swctl diff -f api.yaml: the live image is the updated one, the file the original.
    diff = swctl("diff", "-f", str(path), expect=1).stdout
    assert "-    image: shoal/busybox:2.0\n" in diff
    assert "+    image: shoal/busybox\n" in diff

    # --rollback goes back as a whole: with another change it is refused, untouched.
    err = swctl("service", "update", "--rollback", "--image", "x", "api", expect=1).stderr
    assert err.startswith("error: --rollback cannot be combined with --image: ")
    assert stored(swctl, "api")["metadata"]["resourceVersion"] == version

    # --replicas only: nothing is replaced.
    out = swctl("service", "update", *VERIFY, "--replicas", "4", "api",
                timeout=90).stdout.splitlines()
    assert out[-1] == "verify: Service converged"
    now = running_images(swctl, "api")
    assert len(now) == 4 and set(after) <= set(now)

    swctl("service", "rm", "api")
