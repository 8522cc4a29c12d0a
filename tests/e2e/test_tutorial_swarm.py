"""End to end: Docker's "Getting started with swarm mode" tutorial, and its usual
follow-ups, typed as a Swarm user would type them, translated to ``swctl``.

The cluster is ``swctl up -d --nodes 3`` (three network namespaces, one agent each,
real containers in dockerd; ``upcluster``). The steps run in order, as the tutorial's
do: nodes, deploy, inspect, scale, delete, drain and back, placement with node labels,
a rolling image update, an overlay network whose services reach each other by name, a
published port answered by the routing mesh on every node, health checks, and leaving.

Every step is commented with the Docker command it mirrors and checks two things: what
``swctl`` printed (exit code and the lines a user reads) and what actually runs (the
containers in dockerd with their node and task labels, processes answering on ports,
probed with a Python socket client from the host or inside a node's namespace, or with
busybox ``nc`` inside a task's container). A step that says success without achieving
it therefore fails. Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.agent.exec.executor import LABEL_NODE, LABEL_SERVICE, LABEL_TASK_UID
from shoal.cli import netnodes
from tests.e2e import upcluster
from tests.e2e.netcluster import NETTOOL
from tests.e2e.upcluster import Cluster, until

pytestmark = pytest.mark.timeout(240)

# httpd answering with its container's hostname (docker sets it to the short id).
WHOAMI = ["sh", "-c", "hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
# The tutorial's `alpine ping docker.com`: no registry or internet here, so a loop.
HELLO = ["sh", "-c", "while true; do echo hello docker; sleep 1; done"]
# `sleep 3600` that ends when told to stop: as PID 1, sleep ignores SIGTERM, and every
# stop (update batch, drain, move, rm) would wait out the grace period instead.
SLEEP = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
UPDATED_IMAGE = "shoal/busybox:tutorial-2"


class Tutorial:
    """The cluster, the directory the user's YAML files are written to, and helpers
    that read what swctl printed and what dockerd runs."""

    def __init__(self, cluster: Cluster, files: Path) -> None:
        self.c = cluster
        self.files = files

    @property
    def nodes(self) -> list[str]:
        return self.c.nodes

    def swctl(self, *args: str, expect: int | None = 0,
              timeout: float = 90) -> subprocess.CompletedProcess[str]:
        if args[0] in ("apply", "scale") and "-d" not in args:
            # How long swctl watches the tasks hold still (2 s by default) is not what the
            # tutorial shows: half a second per waiting verb is plenty here.
            args = (*args, "--verify-window", "0.5")
        return self.c.swctl(*args, expect=expect, timeout=timeout)

    def write(self, name: str, *docs: dict[str, Any]) -> str:
        path = self.files / name
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return str(path)

    def running(self, service: str) -> list[Any]:
        """The service's containers dockerd runs (any node of this cluster)."""
        return [x for x in self.c.containers(**{LABEL_SERVICE: service})
                if x.status == "running" and x.labels.get(LABEL_NODE) in self.nodes]

    def per_node(self, service: str) -> dict[str, int]:
        count: dict[str, int] = {}
        for x in self.running(service):
            count[x.labels[LABEL_NODE]] = count.get(x.labels[LABEL_NODE], 0) + 1
        return count

    def address(self, node: str) -> str:
        return str(self.c.cluster_json()["underlay"]["nodes"][self.nodes.index(node)]
                   ["address"])

    def http(self, host: str, port: int, count: int = 1, netns: str | None = None
             ) -> list[str]:
        """``count`` HTTP GETs of host:port with a Python socket client (nettool), from
        the host or inside a node's namespace; each line a body or ``ERR <reason>``."""
        argv = [sys.executable, NETTOOL, "http", host, str(port), str(count), "3"]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        return out.stdout.split()


def service(name: str, command: list[str], replicas: int = 1,
            constraints: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"replicas": replicas,
                            "template": {"image": "shoal/busybox", "command": command,
                                         "stopGracePeriod": "1s"}, **spec}
    # Swarm's 5 s monitor period, waited out after each rollout's last batch, is not what
    # the tutorial shows: a short one keeps its updates (image, constraint, port) quick.
    body["updateConfig"] = {"monitor": "1s", **body.get("updateConfig", {})}
    if constraints:
        body["placement"] = {"constraints": constraints}
    return {"apiVersion": "shoal.io/v1", "kind": "Service", "metadata": {"name": name},
            "spec": body}


def table(text: str) -> list[dict[str, str]]:
    """Rows of a swctl table as {column: cell}; columns are where the header's words
    start (headers are words separated by at least two spaces: "DESIRED STATE")."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    cols = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    rows = []
    for line in lines[1:]:
        row = {}
        for i, (start, name) in enumerate(cols):
            end = cols[i + 1][0] if i + 1 < len(cols) else len(line)
            row[name] = line[start:end].strip()
        rows.append(row)
    return rows


def row(text: str, column: str, value: str) -> dict[str, str]:
    found = [r for r in table(text) if r.get(column) == value]
    assert len(found) == 1, f"expected one row with {column}={value} in:\n{text}"
    return found[0]


def converged(out: subprocess.CompletedProcess[str], *lines: str) -> None:
    """apply/scale said what it did and that the services converged."""
    for line in lines:
        assert line in out.stdout.splitlines(), f"{line!r} not printed:\n{out.stdout}"
    assert out.stdout.rstrip().endswith("Service converged"), out.stdout


def current_tasks(ps: str) -> list[dict[str, str]]:
    """`service ps` rows of the current tasks (not the \\_ history)."""
    return [r for r in table(ps) if not r["NAME"].startswith("\\_")]


@pytest.fixture(scope="module")
async def tutorial(docker_client: Any, tmp_path_factory: pytest.TempPathFactory,
                   request: pytest.FixtureRequest) -> AsyncIterator[Tutorial]:
    tag = "u" + secrets.token_hex(3)
    async with upcluster.started(docker_client, tag, tmp_path_factory.mktemp("swarm"),
                                 request) as cluster:
        try:
            yield Tutorial(cluster, tmp_path_factory.mktemp("files"))
        finally:
            _untag(docker_client)


# --- Step 1: create a swarm and look at its nodes ---

async def test_swarm_up_and_node_ls(tutorial: Tutorial) -> None:
    t = tutorial
    # docker swarm init; docker swarm join --token ... (on two more machines)
    #   -> swctl up -d --nodes 3
    assert t.c.up is not None
    up = t.c.up.stdout + t.c.up.stderr
    assert "✔ 3 nodes ready" in up, up
    for node in t.nodes:
        assert re.search(rf"agent running \(node {node} at \S+, runtime docker; pid \d+\)",
                         up), up
    # What runs: each node's agent is a live process inside its own namespace.
    for node in t.nodes:
        pid = t.c.agent_record(node)["pid"]
        pids = _ip("netns", "pids", f"{netnodes.NETNS_PREFIX}{node}").split()
        assert str(pid) in pids, f"agent of {node} (pid {pid}) not in its namespace"

    # docker node ls
    ls = t.swctl("node", "ls").stdout
    rows = table(ls)
    assert [r["NAME"] for r in rows] == t.nodes, ls
    for r in rows:
        assert (r["STATUS"], r["AVAILABILITY"]) == ("ready", "active"), ls
        assert re.fullmatch(r"[0-9a-f]{12}", r["ID"]), ls  # no `*`: the host is no node
    assert [r["ROLE"] for r in rows] == ["manager", "worker", "worker"], ls
    wide = t.swctl("node", "ls", "-o", "wide").stdout
    assert {r["RUNTIME"] for r in table(wide)} == {"docker"}, wide
    # docker node inspect --pretty NODE-2
    pretty = t.swctl("node", "inspect", "--pretty", t.nodes[1]).stdout
    for line in (f"Hostname:               {t.nodes[1]}", " State:                 Ready",
                 " Availability:          Active", "Runtime:                docker",
                 f" Address:               {t.address(t.nodes[1])}"):
        assert line in pretty.splitlines(), pretty


# --- Step 2: deploy a service, inspect it, read its logs ---

async def test_deploy_and_inspect_a_service(tutorial: Tutorial) -> None:
    t = tutorial
    # docker service create --replicas 1 --name helloworld alpine ping docker.com
    path = t.write("helloworld.yaml", service("helloworld", HELLO))
    out = t.swctl("apply", "-f", path)
    converged(out, "service/helloworld created")
    [container] = t.running("helloworld")  # converged means it runs, now
    node = container.labels[LABEL_NODE]

    # docker service ls
    ls = t.swctl("service", "ls").stdout
    r = row(ls, "NAME", "helloworld")
    assert (r["MODE"], r["REPLICAS"], r["IMAGE"]) == ("replicated", "1/1", "shoal/busybox")
    # docker service ps helloworld
    ps = t.swctl("service", "ps", "helloworld").stdout
    [task] = table(ps)
    assert task["NAME"] == "helloworld.1" and task["NODE"] == node, ps
    assert task["DESIRED STATE"] == "Running" and task["CURRENT STATE"].startswith(
        "Running"), ps
    assert container.labels[LABEL_TASK_UID].replace("-", "").startswith(task["ID"]), ps
    # docker service inspect --pretty helloworld
    described = t.swctl("describe", "service/helloworld").stdout
    for line in ("Name:               helloworld", "  replicas: 1",
                 "  mode: replicated", "    image: shoal/busybox"):
        assert line in described.splitlines(), described
    # docker service logs helloworld: the container's own output, through swctl.
    assert "hello docker" in container.logs().decode()
    logs = await until(lambda: _line(t.swctl("logs", "service/helloworld", "--tail", "1"),
                                     "hello docker"), 30, "a hello line in swctl logs")
    assert logs.startswith(f"helloworld.1.{task['ID']}@{node}"), logs


# --- Step 3: scale it ---

async def test_scale_the_service(tutorial: Tutorial) -> None:
    t = tutorial
    # docker service scale helloworld=5
    out = t.swctl("scale", "helloworld=5")
    converged(out, "helloworld scaled to 5")
    assert len(t.running("helloworld")) == 5
    assert set(t.per_node("helloworld")) == set(t.nodes), t.per_node("helloworld")
    r = row(t.swctl("service", "ls").stdout, "NAME", "helloworld")
    assert r["REPLICAS"] == "5/5", r
    ps = t.swctl("service", "ps", "helloworld").stdout
    tasks = current_tasks(ps)
    assert sorted(x["NAME"] for x in tasks) == [f"helloworld.{i}" for i in range(1, 6)], ps
    running = {x.labels[LABEL_TASK_UID].replace("-", "")[:12]: x.labels[LABEL_NODE]
               for x in t.running("helloworld")}
    assert {x["ID"]: x["NODE"] for x in tasks} == running, ps
    # docker node ls: the TASKS column counts them.
    nodes = table(t.swctl("node", "ls").stdout)
    assert {r["NAME"]: int(r["TASKS"]) for r in nodes} == t.per_node("helloworld")


# --- Step 4: delete it ---

async def test_delete_the_service(tutorial: Tutorial) -> None:
    t = tutorial
    # docker service rm helloworld: the same verb in swctl (kubectl's spelling,
    # `swctl delete service/helloworld`, does the same).
    out = t.swctl("service", "rm", "helloworld")
    assert out.stdout.startswith("service/helloworld delet"), out.stdout
    # docker ps: the containers stop and go away.
    await until(lambda: not t.c.containers(**{LABEL_SERVICE: "helloworld"}), 30,
                "helloworld's containers removed")
    gone = await until(lambda: _failed(t.swctl("service", "ps", "helloworld", expect=None)),
                       30, "service ps saying helloworld is gone")
    assert 'services "helloworld" not found' in gone.stderr, gone.stderr
    assert "helloworld" not in t.swctl("service", "ls").stdout


# --- Step 5: drain a node, then make it active again ---

async def test_drain_and_activate_a_node(tutorial: Tutorial) -> None:
    t = tutorial
    n1, n2, n3 = t.nodes
    # docker service create --replicas 3 --name redis redis:3.0.6
    out = t.swctl("apply", "-f", t.write("redis.yaml", service("redis", SLEEP, replicas=3)))
    converged(out, "service/redis created")
    assert t.per_node("redis") == {n1: 1, n2: 1, n3: 1}
    # docker node update --availability drain NODE-2
    out = t.swctl("node", "update", "--availability", "drain", n2)
    assert out.stdout.strip() == f"node/{n2} updated", out.stdout
    assert row(t.swctl("node", "ls").stdout, "NAME", n2)["AVAILABILITY"] == "drain"
    # The task on NODE-2 is shut down and started elsewhere.
    await until(lambda: len(t.running("redis")) == 3 and n2 not in t.per_node("redis"),
                60, f"redis moved off {n2}")
    ps = await until(lambda: _ps_when(t, "redis", lambda tasks: len(tasks) == 3 and all(
        x["NODE"] != n2 and x["CURRENT STATE"].startswith("Running") for x in tasks)),
        30, "service ps redis showing 3 running off the drained node")
    history = [r for r in table(ps) if r["NAME"].startswith("\\_")]
    assert any(r["NODE"] == n2 and r["DESIRED STATE"] == "Shutdown" for r in history), ps
    assert row(t.swctl("service", "ls").stdout, "NAME", "redis")["REPLICAS"] == "3/3"
    # docker node update --availability active NODE-2: it takes new tasks again (and,
    # as in Swarm, running tasks are not moved back).
    out = t.swctl("node", "update", "--availability", "active", n2)
    assert out.stdout.strip() == f"node/{n2} updated", out.stdout
    assert row(t.swctl("node", "ls").stdout, "NAME", n2)["AVAILABILITY"] == "active"
    assert n2 not in t.per_node("redis")
    # docker service scale redis=4: the new replica goes to the emptiest node, NODE-2.
    converged(t.swctl("scale", "redis=4"), "redis scaled to 4")
    assert t.per_node("redis").get(n2) == 1, t.per_node("redis")
    t.swctl("delete", "service/redis")
    await until(lambda: not t.running("redis"), 30, "redis stopped")


# --- Step 6: placement constraints with node labels ---

async def test_constraints_with_node_labels(tutorial: Tutorial) -> None:
    t = tutorial
    n1, _, n3 = t.nodes
    # docker node update --label-add zone=east NODE-3
    out = t.swctl("node", "update", "--label-add", "zone=east", n3)
    assert out.stdout.strip() == f"node/{n3} updated", out.stdout
    wide = t.swctl("node", "ls", "-o", "wide").stdout
    assert row(wide, "NAME", n3)["LABELS"] == "zone=east", wide
    # docker service create --constraint node.labels.zone==east --replicas 2 --name east
    out = t.swctl("apply", "-f", t.write("east.yaml", service(
        "east", SLEEP, replicas=2, constraints=["node.labels.zone==east"])))
    converged(out, "service/east created")
    assert t.per_node("east") == {n3: 2}
    ps = t.swctl("service", "ps", "east").stdout
    assert {r["NODE"] for r in table(ps)} == {n3}, ps

    # docker service create --constraint node.labels.zone==west --name west: no node
    # matches, so it is not reported converged; `service ps` says why.
    out = t.swctl("apply", "-f", t.write("west.yaml", service(
        "west", SLEEP, constraints=["node.labels.zone==west"])), "--timeout", "5",
        expect=1)
    assert "service/west created" in out.stdout.splitlines(), out.stdout
    assert "Service converged" not in out.stdout, out.stdout
    assert "did not converge" in out.stderr and "no suitable node" in out.stderr, out.stderr
    ps = t.swctl("service", "ps", "--no-trunc", "west").stdout
    [pending] = table(ps)
    assert pending["CURRENT STATE"].startswith("Pending"), ps
    assert "no suitable node" in pending["ERROR"] and "zone==west" in pending["ERROR"], ps
    assert row(t.swctl("service", "ls").stdout, "NAME", "west")["REPLICAS"] == "0/1"
    assert not t.running("west")
    # docker node update --label-add zone=west NODE-1: the waiting task lands there.
    t.swctl("node", "update", "--label-add", "zone=west", n1)
    await until(lambda: t.per_node("west") == {n1: 1}, 30, "west running on the west node")
    assert row(t.swctl("service", "ls").stdout, "NAME", "west")["REPLICAS"] == "1/1"
    t.swctl("delete", "service/west")


async def test_changed_constraint_moves_the_tasks(tutorial: Tutorial) -> None:
    t = tutorial
    n1 = t.nodes[0]
    # docker service update --constraint-rm node.labels.zone==east
    #   --constraint-add node.labels.zone==west east
    #   -> edit east.yaml, swctl apply -f east.yaml
    out = t.swctl("apply", "-f", t.write("east.yaml", service(
        "east", SLEEP, replicas=2, constraints=["node.labels.zone==west"])), "--timeout", "60")
    converged(out, "service/east configured")
    assert t.per_node("east") == {n1: 2}, t.per_node("east")  # converged: moved, now
    ps = t.swctl("service", "ps", "east").stdout
    assert {r["NODE"] for r in current_tasks(ps)} == {n1}, ps
    t.swctl("delete", "service/east")
    await until(lambda: not t.running("east"), 30, "east stopped")


# --- Step 7: a rolling update of the image ---

async def test_rolling_image_update(tutorial: Tutorial) -> None:
    t = tutorial
    # (the tutorial's redis:3.0.7: a second tag of the test image, as no registry is here)
    t.c.docker.images.get("shoal/busybox").tag(UPDATED_IMAGE)
    # docker service create --replicas 3 --name upd --update-delay 1s redis:3.0.6
    doc = service("upd", SLEEP, replicas=3, updateConfig={"delay": "1s"})
    converged(t.swctl("apply", "-f", t.write("upd.yaml", doc)), "service/upd created")
    before = {x.id for x in t.running("upd")}
    # docker service update --image redis:3.0.7 upd
    doc["spec"]["template"]["image"] = UPDATED_IMAGE
    out = t.swctl("apply", "-f", t.write("upd.yaml", doc), "--timeout", "90", timeout=120)
    converged(out, "service/upd configured")
    # Converged means every running container is of the new image, now.
    now = t.running("upd")
    assert len(now) == 3 and not before & {x.id for x in now}
    assert {x.attrs["Config"]["Image"] for x in now} == {UPDATED_IMAGE}
    ps = t.swctl("service", "ps", "upd").stdout
    assert {r["IMAGE"] for r in current_tasks(ps)} == {UPDATED_IMAGE}, ps
    assert row(t.swctl("service", "ls").stdout, "NAME", "upd")["IMAGE"] == UPDATED_IMAGE
    t.swctl("delete", "service/upd")
    await until(lambda: not t.running("upd"), 30, "upd stopped")


# --- Step 8: an overlay network; two services reach each other by name ---

async def test_overlay_network_and_service_discovery(tutorial: Tutorial) -> None:
    t = tutorial
    # docker network create --driver overlay --subnet 10.0.9.0/24 my_network
    out = t.swctl("network", "create", "-d", "overlay", "--subnet", "10.0.9.0/24",
                  "my_network")
    assert out.stdout.strip() == "network/my_network created", out.stdout
    net = await until(lambda: _vni(t.swctl("network", "ls").stdout, "my_network"), 30,
                      "my_network with a VNI in network ls")
    assert (net["DRIVER"], net["SUBNET"], net["SCOPE"]) == ("overlay", "10.0.9.0/24",
                                                            "swarm"), net
    # docker service create --network my_network --replicas 2 --name whoami ...
    # docker service create --network my_network --name client busybox sleep 3600
    path = t.write("whoami.yaml",
                   service("whoami", WHOAMI, replicas=2, networks=["my_network"]),
                   service("client", SLEEP, networks=["my_network"]))
    out = t.swctl("apply", "-f", path)
    for line in ("service/whoami created", "service/client created",
                 "whoami: verify: Service converged", "client: verify: Service converged"):
        assert line in out.stdout.splitlines(), out.stdout
    whoami = {x.attrs["Config"]["Hostname"] for x in t.running("whoami")}
    assert len(whoami) == 2
    [client] = t.running("client")

    # docker network inspect my_network: its services and the tasks attached.
    inspect = t.swctl("network", "inspect", "my_network").stdout
    assert " Subnet:                10.0.9.0/24" in inspect.splitlines(), inspect
    assert "Services: 2" in inspect and "Tasks: 3" in inspect, inspect
    addresses = re.findall(r"default/whoami\.\d\.\d+\s+\S+\s+running\s+(10\.0\.9\.\d+)/24",
                           inspect)
    assert len(addresses) == 2, inspect

    # docker exec CLIENT nslookup tasks.whoami: the task addresses inspect showed.
    _, text = client.exec_run(["nslookup", "tasks.whoami"])
    found = re.findall(r"Address: (10\.0\.9\.\d+)", text.decode())
    assert sorted(found) == sorted(addresses), text.decode()
    # docker exec CLIENT wget -qO- whoami (busybox nc here): both replicas answer the
    # service name, through its VIP.
    seen: set[str] = set()

    def both_answered() -> bool:
        seen.update(_nc(client, "whoami", 80).split())
        return whoami <= seen

    await until(both_answered, 30, f"both whoami tasks answering 'whoami' (seen {seen})",
                interval=0.2)

    # docker network rm my_network while in use: refused, nothing removed.
    out = t.swctl("network", "rm", "my_network", expect=1)
    assert "network my_network is in use by 3 tasks" in out.stderr, out.stderr
    assert "error: nothing was removed" in out.stderr, out.stderr
    assert _vni(t.swctl("network", "ls").stdout, "my_network")
    t.swctl("delete", "service/whoami", "service/client")
    removed = await until(lambda: _ok(t.swctl("network", "rm", "my_network", expect=None)),
                          30, "my_network removable once its tasks ended")
    assert removed.stdout.strip() == "network/my_network removed", removed.stdout
    assert "my_network" not in t.swctl("network", "ls").stdout


# --- Step 9: a published port, answered on every node by the routing mesh ---

async def test_published_port_routing_mesh(tutorial: Tutorial) -> None:
    t = tutorial
    n3 = t.nodes[2]
    # docker service create --name web --publish published=8080,target=80 --replicas 2
    #   --constraint node.hostname!=NODE-3 nginx
    doc = service("web", WHOAMI, replicas=2, constraints=[f"node.hostname!={n3}"],
                  endpoint={"ports": [{"published": 8080, "target": 80}]})
    converged(t.swctl("apply", "-f", t.write("web.yaml", doc)), "service/web created")
    hosts = {x.attrs["Config"]["Hostname"] for x in t.running("web")}
    assert len(hosts) == 2 and n3 not in t.per_node("web")
    # docker service ls: the PORTS column.
    assert row(t.swctl("service", "ls").stdout, "NAME", "web")["PORTS"] == "*:8080->80/tcp"
    # curl http://NODE:8080 for every node, NODE-3 too, which runs no web task.
    for node in t.nodes:
        got = t.http(t.address(node), 8080, count=6)
        assert got and set(got) <= hosts, f"{node}:8080 answered {got}, tasks are {hosts}"


async def test_published_port_on_each_nodes_localhost(tutorial: Tutorial) -> None:
    t = tutorial
    hosts = {x.attrs["Config"]["Hostname"] for x in t.running("web")}
    assert len(hosts) == 2
    # curl http://localhost:8080, logged in on each node.
    for node in t.nodes:
        got = t.http("127.0.0.1", 8080, count=4, netns=f"{netnodes.NETNS_PREFIX}{node}")
        assert got and set(got) <= hosts, f"127.0.0.1:8080 on {node} answered {got}"


async def test_published_port_added_to_a_running_service(tutorial: Tutorial) -> None:
    t = tutorial
    # docker service update --publish-add published=8081,target=80 web
    doc = service("web", WHOAMI, replicas=2, constraints=[f"node.hostname!={t.nodes[2]}"],
                  endpoint={"ports": [{"published": 8080, "target": 80},
                                      {"published": 8081, "target": 80}]})
    out = t.swctl("apply", "-f", t.write("web.yaml", doc), "--timeout", "60")
    converged(out, "service/web configured")
    ports = row(t.swctl("service", "ls").stdout, "NAME", "web")["PORTS"]
    assert {p.strip() for p in ports.split(",")} == {"*:8080->80/tcp", "*:8081->80/tcp"}, ports
    hosts = {x.attrs["Config"]["Hostname"] for x in t.running("web")}
    for node in t.nodes:
        got = t.http(t.address(node), 8081, count=4)
        assert got and set(got) <= hosts, f"{node}:8081 answered {got}, tasks are {hosts}"


# --- Step 10: health checks ---

async def test_unhealthy_task_is_replaced(tutorial: Tutorial) -> None:
    t = tutorial
    t.swctl("delete", "service/web")
    # docker service create --name sick --health-cmd "test -f /tmp/ok"
    #   --health-interval 1s --health-timeout 1s --health-retries 2 busybox
    #   sh -c "touch /tmp/ok; sleep 6; rm /tmp/ok; exec sleep 3600"
    doc = service("sick", ["sh", "-c", "touch /tmp/ok; sleep 6; rm /tmp/ok; exec sleep 3600"],
                  restartPolicy={"condition": "any", "delay": "1s"})
    doc["spec"]["template"]["healthcheck"] = {
        "test": ["CMD-SHELL", "test -f /tmp/ok"], "interval": "1s", "timeout": "1s",
        "retries": 2}
    converged(t.swctl("apply", "-f", t.write("sick.yaml", doc)), "service/sick created")
    [first] = t.running("sick")
    first.reload()
    assert first.attrs["State"]["Health"]["Status"] == "healthy"  # Running means healthy
    # docker service ps sick: the unhealthy task failed, a new one runs in its slot.
    ps = await until(lambda: _ps_when(t, "sick", lambda tasks: any(
        x["NAME"] == "\\_ sick.1" and x["CURRENT STATE"].startswith("Failed")
        for x in tasks) and any(x["NAME"] == "sick.1" and x["CURRENT STATE"].startswith(
            "Running") for x in tasks), history=True), 60,
        "service ps sick with a failed task and its running replacement")
    failed = next(r for r in table(ps) if r["NAME"] == "\\_ sick.1")
    assert failed["ERROR"] == '"task: container unhealthy"', ps
    first.reload()
    assert first.status != "running"
    assert first.attrs["State"]["Health"]["Status"] == "unhealthy"
    [fresh] = await until(lambda: t.running("sick"), 30, "the replacement container")
    assert fresh.id != first.id
    t.swctl("delete", "service/sick")


async def test_never_healthy_service_is_not_reported_converged(tutorial: Tutorial) -> None:
    t = tutorial
    # docker service create --name never --health-cmd false --health-interval 1s ...
    doc = service("never", SLEEP, restartPolicy={"condition": "any", "delay": "1s"})
    doc["spec"]["template"]["healthcheck"] = {
        "test": ["CMD-SHELL", "false"], "interval": "1s", "timeout": "1s", "retries": 2}
    out = t.swctl("apply", "-f", t.write("never.yaml", doc), "--timeout", "5", expect=1)
    assert "Service converged" not in out.stdout, out.stdout
    # Either the wait ran out with the task still starting (its check not passed yet) or
    # it saw the task fail: both say so and neither counts it as running.
    assert "did not converge within 5s: 0 out of 1 tasks running" in out.stderr or (
        "container unhealthy" in out.stderr), out.stderr
    # docker service ps never: the failed task says why.
    await until(lambda: _ps_when(t, "never", lambda tasks: any(
        r["ERROR"] == '"task: container unhealthy"' for r in tasks), history=True), 30,
        "service ps never showing a task failed as unhealthy")
    assert row(t.swctl("service", "ls").stdout, "NAME", "never")["REPLICAS"] == "0/1"
    for x in t.c.containers(**{LABEL_SERVICE: "never"}):
        assert x.attrs["State"].get("Health", {}).get("Status") != "healthy"
    t.swctl("delete", "service/never")


# --- Step 11: leave ---

async def test_down_leaves_nothing(tutorial: Tutorial) -> None:
    t = tutorial
    # docker swarm leave --force, on every node -> swctl down
    out = upcluster.down(t.c.state_dir, t.c.env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "underlay removed (3 node namespaces" in out.stdout + out.stderr, out.stdout
    for node in t.nodes:
        assert not t.c.containers(**{LABEL_NODE: node}), node
    spaces = _ip("netns", "list")
    assert t.c.tag not in spaces, spaces


# --- helpers ---

def _line(out: subprocess.CompletedProcess[str], text: str) -> str | None:
    return next((line for line in out.stdout.splitlines() if text in line), None)


def _failed(out: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str] | None:
    return out if out.returncode != 0 else None


def _ok(out: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str] | None:
    return out if out.returncode == 0 else None


def _ps_when(t: Tutorial, name: str, check: Callable[[list[dict[str, str]]], bool],
             history: bool = False) -> str | None:
    ps = t.swctl("service", "ps", name).stdout
    rows = table(ps) if history else current_tasks(ps)
    return ps if check(rows) else None


def _vni(ls: str, name: str) -> dict[str, str] | None:
    found = [r for r in table(ls) if r["NAME"] == name]
    return found[0] if found and found[0]["VNI"].isdigit() else None


def _nc(container: Any, host: str, port: int) -> str:
    """One HTTP GET from inside the container with busybox nc; the body's last line."""
    code, out = container.exec_run(
        ["sh", "-c", f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 2 {host} {port}'])
    lines = out.decode(errors="replace").strip().splitlines()
    return lines[-1] if code == 0 and lines else ""


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30).stdout


def _untag(docker: Any) -> None:
    with contextlib.suppress(Exception):  # never tagged, or already gone: harmless
        docker.images.remove(UPDATED_IMAGE, noprune=True)
