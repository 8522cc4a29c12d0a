"""Docker's names through the whole path, as a Swarm user types them: ``swctl apply`` of a
service ``hyperf_v1.0`` and a network ``nginx_network``, then get, scale, ``service ps``,
logs and delete; names Docker refuses are refused with the rule, and nothing is written.

The cluster is real: the session etcd, a ``swctl controller-manager`` and a ``swctl agent
--runtime process`` (tasks are real processes on this machine, so their output is real
logs), each a separate process. DNS answers for such names are tested in
tests/e2e/test_dns.py.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from shoal.store import etcd_server
from tests.helpers import eventually_sync as eventually
from tests.helpers import stop_processes
from tests.integration.cli_support import Swctl, command

T = TypeVar("T")
VERIFY = ("--verify-window", "0.3")

HYPERF = """\
apiVersion: shoal.io/v1
kind: Network
metadata: {name: nginx_network}
---
apiVersion: shoal.io/v1
kind: Service
metadata: {name: hyperf_v1.0}
spec:
  replicas: 1
  template:
    image: shoal/busybox
    command: [sh, -c, 'echo "hello from $HOSTNAME"; exec sleep 3600']
    stopGracePeriod: 1s
"""




@pytest.fixture(scope="module")
def cluster(etcd: etcd_server.EtcdServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swctl]:
    prefix = f"/t-{uuid.uuid4().hex[:12]}"
    cwd = tmp_path_factory.mktemp("names")
    swctl = Swctl(etcd.url, prefix, cwd)
    node = f"pn-{uuid.uuid4().hex[:6]}"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for name, args in (("manager", ["controller-manager"]),
                           ("agent", ["agent", "--runtime", "process", "--name", node,
                                      "--dataplane", "none", "--logs-port",
                                      str(etcd_server.free_port()),
                                      "--state-dir", str(cwd / "state")])):
            log = open(cwd / f"{name}.log", "wb")  # closed in finally
            logs.append(log)
            procs.append(subprocess.Popen(command(*args), env=swctl.env, cwd=cwd,
                                          stdout=log, stderr=subprocess.STDOUT))
        eventually(lambda: f"{node} " in swctl("node", "ls").stdout
                   and "ready" in swctl("node", "ls").stdout, what="the process node ready")
        yield swctl
    except BaseException:
        for log_path in sorted(Path(cwd).glob("*.log")):
            print(f"--- {log_path.name}\n" + "\n".join(
                log_path.read_text(errors="replace").splitlines()[-30:]))
        raise
    finally:
        stop_processes(procs, timeout=15)
        for log in logs:
            log.close()


def _running(swctl: Swctl, service: str) -> list[str]:
    """NAME cells of the current tasks of ``service`` that run (``service ps``)."""
    lines = swctl("service", "ps", service).stdout.splitlines()
    head = lines[0]
    state_at = head.index("CURRENT STATE")
    return [line.split()[1] for line in lines[1:]
            if not line.lstrip().startswith("\\_") and line[state_at:].startswith("Running")]


def test_docker_names_apply_run_scale_log_and_delete(cluster: Swctl) -> None:
    swctl = cluster
    path = swctl.write("hyperf.yaml", HYPERF)

    # swctl apply -f hyperf.yaml
    out = swctl("apply", "-f", str(path), *VERIFY, timeout=60).stdout.splitlines()
    assert out[0] == "network/nginx_network created"
    assert out[1] == "service/hyperf_v1.0 created"
    assert out[-1] == "verify: Service converged"

    # swctl get service/hyperf_v1.0 -- kubectl's TYPE/NAME; the dot stays in the name.
    table = swctl("get", "service/hyperf_v1.0").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "MODE", "REPLICAS"]
    assert table[1].split()[:3] == ["hyperf_v1.0", "replicated", "1/1"]
    doc = yaml.safe_load(swctl("get", "network/nginx_network", "-o", "yaml").stdout)
    assert doc["metadata"]["name"] == "nginx_network"
    eventually(lambda: yaml.safe_load(swctl("get", "network/nginx_network", "-o", "yaml")
                                      .stdout).get("status", {}).get("vni"),
               what="nginx_network allocated a VNI")

    # swctl scale service/hyperf_v1.0 --replicas 2
    scaled = swctl("scale", "service/hyperf_v1.0", "--replicas", "2", *VERIFY, timeout=60)
    assert scaled.stdout.splitlines()[0] == "hyperf_v1.0 scaled to 2"
    assert scaled.stdout.splitlines()[-1] == "verify: Service converged"

    # swctl service ps hyperf_v1.0 -- task names are <service>.<slot>: the dot is kept.
    assert sorted(eventually(lambda: len(_running(swctl, "hyperf_v1.0")) == 2
                             and _running(swctl, "hyperf_v1.0"),
                             what="2 running tasks")) == ["hyperf_v1.0.1", "hyperf_v1.0.2"]

    # swctl logs service/hyperf_v1.0 -- what the processes really printed.
    def logged() -> list[str]:
        text = swctl("logs", "service/hyperf_v1.0", expect=None).stdout
        return [line for line in text.splitlines() if "hello from" in line]
    lines = eventually(lambda: len(logged()) == 2 and logged(), what="both tasks' output")
    # Each line is prefixed <service>.<slot>.<task id>@<node>, the service name whole.
    assert sorted(line.split(".")[:3] for line in lines) == [
        ["hyperf_v1", "0", "1"], ["hyperf_v1", "0", "2"]]
    assert all("hello from hyperf_v1.0." in line for line in lines)

    # swctl delete service/hyperf_v1.0 (and the network, by TYPE/NAME too)
    assert swctl("delete", "service/hyperf_v1.0").stdout.startswith(
        "service/hyperf_v1.0 deletion requested")
    eventually(lambda: "hyperf_v1.0" not in swctl("get", "tasks").stdout,
               what="the tasks of hyperf_v1.0 gone")
    swctl("delete", "network/nginx_network")
    assert "nginx_network" not in swctl("get", "networks").stdout


@pytest.mark.parametrize(("name", "fragment"), [
    ("-bad", 'did you mean "bad"?'),
    ("a b", 'did you mean "a-b"?'),
    ("a" * 64, "at most 63 characters (Docker's rule); this one has 64"),
])
def test_names_docker_refuses_are_refused_and_nothing_is_written(
        cluster: Swctl, name: str, fragment: str) -> None:
    swctl = cluster
    path = swctl.write("bad.yaml", HYPERF.replace("hyperf_v1.0", f"'{name}'")
                       .replace("nginx_network", "ok_network"))
    # swctl apply -f bad.yaml
    err = swctl("apply", "-f", str(path), expect=1).stderr
    shown = name if len(name) <= 60 else name[:57] + "..."
    assert f'metadata.name: "{shown}" is not a valid service name: use letters, digits, ' \
           "'_', '.' and '-', starting and ending with a letter or digit" in err
    assert fragment in err
    # All or nothing: the valid network beside it was not created either.
    assert "ok_network" not in swctl("get", "networks").stdout


# A stack as compose users name them (`docker stack deploy -c web.yml my_app.v1`): in
# Shoal the stack name is the namespace its objects live in.
STACK = """\
apiVersion: shoal.io/v1
kind: Network
metadata: {name: front_net}
---
apiVersion: shoal.io/v1
kind: Service
metadata:
  name: web
  namespace: my_app.v1
  labels: {com.docker.stack.namespace: my_app.v1}
spec:
  replicas: 1
  networks: [front_net]
  template:
    image: shoal/busybox
    command: [sh, -c, 'echo "hello from $HOSTNAME"; exec sleep 3600']
    stopGracePeriod: 1s
"""


def _stack_running(swctl: Swctl) -> list[str]:
    lines = swctl("service", "ps", "web", "-n", "my_app.v1").stdout.splitlines()
    state_at = lines[0].index("CURRENT STATE")
    return [line.split()[1] for line in lines[1:]
            if not line.lstrip().startswith("\\_") and line[state_at:].startswith("Running")]


def test_a_stack_named_the_docker_way_applies_runs_scales_and_deletes(cluster: Swctl) -> None:
    swctl = cluster
    path = swctl.write("web.yaml", STACK)

    # swctl apply -f web.yaml -n my_app.v1
    out = swctl("apply", "-f", str(path), "-n", "my_app.v1", *VERIFY, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[0] == "network/front_net created"
    assert lines[1] == "service/web created"
    assert lines[-1] == "verify: Service converged"

    # swctl get services -n my_app.v1
    table = swctl("get", "services", "-n", "my_app.v1").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "MODE", "REPLICAS"]
    assert table[1].split()[:3] == ["web", "replicated", "1/1"]
    # ... and it lives in that stack only: not in default, listed under its name by -A.
    assert "web" not in swctl("get", "services").stdout
    everywhere = swctl("get", "services", "-A").stdout.splitlines()
    assert ["my_app.v1", "web"] in [row.split()[:2] for row in everywhere[1:]]
    # A selector on the stack label, as `docker service ls --filter label=...` does.
    labelled = swctl("get", "services", "-A", "-l", "com.docker.stack.namespace=my_app.v1")
    assert [row.split()[:2] for row in labelled.stdout.splitlines()[1:]] == [
        ["my_app.v1", "web"]]
    doc = yaml.safe_load(swctl("get", "service/web", "-n", "my_app.v1", "-o", "yaml").stdout)
    assert doc["metadata"]["namespace"] == "my_app.v1"
    described = swctl("describe", "service/web", "-n", "my_app.v1").stdout
    assert any(line.split() == ["Namespace:", "my_app.v1"] for line in described.splitlines())

    # swctl service ps web -n my_app.v1
    assert eventually(lambda: _stack_running(swctl), what="web running") == ["web.1"]

    # swctl scale service/web --replicas 2 -n my_app.v1
    scaled = swctl("scale", "service/web", "--replicas", "2", "-n", "my_app.v1", *VERIFY,
                   timeout=60).stdout.splitlines()
    assert scaled[0] == "web scaled to 2"
    assert scaled[-1] == "verify: Service converged"
    assert sorted(eventually(lambda: len(_stack_running(swctl)) == 2 and _stack_running(swctl),
                             what="2 running tasks")) == ["web.1", "web.2"]

    # swctl logs service/web -n my_app.v1 -- the processes' real output.
    def logged() -> list[str]:
        text = swctl("logs", "service/web", "-n", "my_app.v1", expect=None).stdout
        return [line for line in text.splitlines() if "hello from" in line]
    assert len(eventually(lambda: len(logged()) == 2 and logged(), what="both outputs")) == 2

    # swctl delete -f web.yaml -- the manifest names the namespace, so no -n is needed.
    gone = swctl("delete", "-f", str(path)).stdout.splitlines()
    # (the service first: its tasks stop before the network they sit on goes)
    assert gone[0].startswith("service/web deletion requested"), gone
    assert gone[1] == "network/front_net deleted"
    eventually(lambda: "web" not in swctl("get", "tasks", "-n", "my_app.v1").stdout,
               what="the tasks of my_app.v1/web gone")
    assert "web" not in swctl("get", "services", "-A").stdout


@pytest.mark.parametrize(("namespace", "fragment"), [
    ("-x", 'did you mean "x"?'),
    ("a b", 'did you mean "a-b"?'),
])
def test_stack_names_docker_refuses_are_refused(cluster: Swctl, namespace: str,
                                                 fragment: str) -> None:
    swctl = cluster
    rule = (f'"{namespace}" is not a valid namespace: use letters, digits, \'_\', \'.\' and '
            "'-', starting and ending with a letter or digit, at most 63 characters "
            "(Docker's rule)")
    # In the manifest: swctl apply -f bad.yaml -- refused, and nothing written.
    path = swctl.write("badns.yaml", STACK.replace("front_net", "bad_ns_net")
                       .replace("namespace: my_app.v1", f"namespace: '{namespace}'"))
    err = swctl("apply", "-f", str(path), expect=1).stderr
    assert f"metadata.namespace: {rule}" in err and fragment in err
    assert "bad_ns_net" not in swctl("get", "networks").stdout
    # On the command line: swctl get services --namespace=-x / swctl get services -n 'a b'
    for verb in (("get", "services"), ("service", "ps", "web"), ("delete", "service/web"),
                 ("scale", "service/web", "--replicas", "1")):
        err = swctl(*verb, f"--namespace={namespace}", expect=1).stderr
        assert err.startswith(f"error: argument -n/--namespace: {rule}"), err
        assert fragment in err and "--help" in err
