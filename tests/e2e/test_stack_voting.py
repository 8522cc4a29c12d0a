"""End to end: Docker's voting-app stack, rebuilt on shoal/busybox, deployed with
``swctl stack deploy`` to ``swctl up -d --nodes 3`` (three network namespaces, real
containers in dockerd), as a Swarm user deploys ``docker stack deploy -c ... vote``.

The stack keeps the corpus file's shape (``stacks/001-dockersamples__example-voting-app``):
``redis`` and ``vote`` on ``frontend``, ``db`` and ``result`` on ``backend``, ``worker``
on both, ``vote`` and ``result`` published. Each server is busybox httpd answering with
its own name, so a reply says who answered. ``db`` gets a secret and a config from files
beside the stack file.

The steps run in order and check what a user would: what swctl printed, and what runs --
containers in dockerd, replies over the overlay by compose name from inside a task,
replies on the published ports from every node, the secret's file inside the task and
nowhere on disk, the new value after the file changed and the stack was deployed again,
and nothing left once ``stack rm`` returns.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.exec.executor import LABEL_NAMESPACE, LABEL_SERVICE
from shoal.cli import netnodes
from shoal.net import naming
from tests.e2e import upcluster
from tests.e2e.test_agent_taskfiles import on_disk
from tests.e2e.test_tutorial_swarm import Tutorial, table
from tests.e2e.upcluster import until

pytestmark = pytest.mark.timeout(240)

STACK = "voting"
PASSWORD = "pw-" + secrets.token_hex(8)  # unique, so a search of the disk means something
NEW_PASSWORD = "pw-" + secrets.token_hex(8)
DB_CONF = "max_connections = 7\n"


def _server(name: str) -> str:
    return f'["sh", "-c", "echo {name} > /www/index.html && exec httpd -f -p 80 -h /www"]'


COMPOSE = f"""\
version: "3.8"
services:
  redis:
    image: shoal/busybox
    command: {_server("redis")}
    networks: [frontend]
    deploy:
      replicas: 1
      update_config: {{parallelism: 2, delay: 1s}}
      restart_policy: {{condition: on-failure}}
  db:
    image: shoal/busybox
    command: {_server("db")}
    stop_grace_period: 1s
    networks: [backend]
    secrets: [db_password]
    configs:
      - source: db_conf
        target: /etc/db.conf
        mode: 0440
    deploy:
      update_config: {{order: start-first, monitor: 1s}}
  vote:
    image: shoal/busybox
    command: ["sh", "-c", "hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["5000:80"]
    networks: [frontend]
    depends_on: [redis]
    deploy:
      replicas: 2
      restart_policy: {{condition: on-failure}}
  result:
    image: shoal/busybox
    command: {_server("result")}
    ports: ["5001:80"]
    networks: [backend]
    depends_on: [db]
  worker:
    image: shoal/busybox
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    networks: [frontend, backend]
    depends_on: [db, redis]
    deploy:
      labels: [APP=VOTING]
networks:
  frontend:
  backend:
secrets:
  db_password:
    file: ./db_password.txt
configs:
  db_conf:
    file: ./db.conf
"""

SERVICES = ("db", "redis", "result", "vote", "worker")


class Stack(Tutorial):
    """The tutorial's cluster helpers, plus the stack's files and containers."""

    @property
    def compose(self) -> str:
        return str(self.files / "docker-stack.yml")

    def deploy(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return self.swctl("stack", "deploy", "-c", self.compose, "--verify-window", "0.5",
                          *flags, STACK, timeout=180)

    def running(self, service: str) -> list[Any]:
        return [x for x in self.c.containers(**{LABEL_NAMESPACE: STACK,
                                                LABEL_SERVICE: f"{STACK}_{service}"})
                if x.status == "running"]

    def fetch(self, container: Any, host: str, port: int = 80) -> str:
        """One HTTP GET from inside a task's container with busybox nc: the body's last
        line, or "" when the name does not resolve or nothing answers."""
        code, out = container.exec_run(
            ["sh", "-c", f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 2 {host} {port}'])
        lines = out.decode(errors="replace").strip().splitlines()
        return lines[-1] if code == 0 and lines else ""

    def read(self, container: Any, *argv: str) -> str:
        code, out = container.exec_run(list(argv))
        assert code == 0, f"{argv} exited {code}: {out.decode(errors='replace')}"
        return str(out.decode())


@pytest.fixture(scope="module")
async def stack(docker_client: Any, tmp_path_factory: pytest.TempPathFactory,
                request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    tag = "v" + secrets.token_hex(3)
    async with upcluster.started(docker_client, tag, tmp_path_factory.mktemp("stack"),
                                 request) as cluster:
        files = tmp_path_factory.mktemp("files")
        (files / "docker-stack.yml").write_text(COMPOSE)
        (files / "db_password.txt").write_text(PASSWORD)
        (files / "db.conf").write_text(DB_CONF)
        yield Stack(cluster, files)


async def test_deploy_prints_what_it_creates_and_converges(stack: Stack) -> None:
    s = stack
    # docker stack deploy -c docker-stack.yml voting
    out = s.deploy()
    lines = out.stdout.splitlines()
    for made in ("Creating network voting_backend", "Creating network voting_frontend",
                 "Creating secret voting_db_password", "Creating config voting_db_conf",
                 *(f"Creating service voting_{name}" for name in SERVICES)):
        assert made in lines, out.stdout
    # As docker 20.10: depends_on is dropped for stacks without a word.
    assert "depends_on" not in out.stderr, out.stderr
    # Converged means it runs: every replica is a running container now.
    assert len(s.running("vote")) == 2
    for name in ("db", "redis", "result", "worker"):
        assert len(s.running(name)) == 1, name

    # docker stack ls / docker stack services voting
    [ls] = [r for r in table(s.swctl("stack", "ls").stdout) if r["NAME"] == STACK]
    assert ls["SERVICES"] == "5", ls
    services = {r["NAME"]: r for r in table(s.swctl("stack", "services", STACK).stdout)}
    assert set(services) == {f"{STACK}_{n}" for n in SERVICES}, services
    assert services["voting_vote"]["REPLICAS"] == "2/2", services
    # The same file again changes nothing.
    again = s.deploy()
    assert not any(line.startswith(("Creating", "Updating")) for line in
                   again.stdout.splitlines()), again.stdout


async def test_services_reach_each_other_by_compose_name(stack: Stack) -> None:
    s = stack
    [worker] = s.running("worker")
    # worker is on both networks: redis and db by their compose names, and by the
    # stack-qualified service name.
    for host, answer in (("redis", "redis"), ("db", "db"), ("voting_db", "db"),
                         ("result", "result")):
        await until(lambda h=host, a=answer: s.fetch(worker, h) == a, 30,
                    f"worker reaching {host}")
    # vote is on frontend only: redis answers, db (on backend) does not even resolve.
    [vote, _] = s.running("vote")
    await until(lambda: s.fetch(vote, "redis") == "redis", 30, "vote reaching redis")
    assert s.fetch(vote, "db") == ""
    code, _ = vote.exec_run(["nslookup", "db"])
    assert code != 0


async def test_published_ports_answer_on_every_node(stack: Stack) -> None:
    s = stack
    votes = {x.attrs["Config"]["Hostname"] for x in s.running("vote")}
    for node in s.nodes:
        got = s.http(s.address(node), 5000, count=4)
        assert got and set(got) <= votes, f"{node}:5000 answered {got}, tasks are {votes}"
        assert s.http(s.address(node), 5001) == ["result"], node
        local = s.http("127.0.0.1", 5000, netns=f"{netnodes.NETNS_PREFIX}{node}")
        assert local and set(local) <= votes, f"127.0.0.1:5000 on {node}: {local}"


async def test_secret_and_config_are_files_in_the_task_and_nowhere_else(
        stack: Stack) -> None:
    s = stack
    [db] = s.running("db")
    # docker exec DB cat /run/secrets/db_password
    assert s.read(db, "cat", "/run/secrets/db_password") == PASSWORD
    assert s.read(db, "stat", "-c", "%a %u %g", "/run/secrets/db_password").split() == [
        "444", "0", "0"]
    mounts = s.read(db, "cat", "/proc/mounts").splitlines()
    fs = {line.split()[1]: line.split()[2] for line in mounts}
    assert fs.get("/run/secrets/db_password") == "tmpfs", mounts
    # The config: its content and the mode the file asked for.
    assert s.read(db, "cat", "/etc/db.conf") == DB_CONF
    assert s.read(db, "stat", "-c", "%a", "/etc/db.conf").strip() == "440"
    # Not printed by get, not on the node's disk: the cluster's state (etcd's data, the
    # agents' state and logs) and dockerd's.
    shown = s.swctl("get", "secret", "voting_db_password", "-n", STACK, "-o", "yaml").stdout
    assert PASSWORD not in shown and "dataDigest" in shown, shown
    assert on_disk([s.c.state_dir, Path("/var/lib/docker")], PASSWORD.encode()) == []


async def test_a_changed_secret_file_rolls_the_service_on_deploy(stack: Stack) -> None:
    s = stack
    [before] = s.running("db")
    (s.files / "db_password.txt").write_text(NEW_PASSWORD)
    out = s.deploy()
    assert "Updating secret voting_db_password" in out.stdout.splitlines(), out.stdout

    # The rotation rolls db through its updateConfig (start-first): a new container
    # with the new value, the old one gone, db answering throughout.
    def rolled() -> Any:
        now = s.running("db")
        return now if len(now) == 1 and now[0].id != before.id else None

    [after] = await until(rolled, 90, "db replaced after its secret changed")
    assert s.read(after, "cat", "/run/secrets/db_password") == NEW_PASSWORD
    # Why it rolled, where `rollout status`/`describe` read it (a forced roll is a
    # restart, not a new revision: the template did not change).
    svc = json.loads(s.swctl("get", "service", "voting_db", "-n", STACK, "-o", "json").stdout)
    cause = svc["metadata"]["annotations"]["shoal.io/change-cause"]
    assert cause == "secret voting_db_password updated", cause
    [worker] = s.running("worker")
    await until(lambda: s.fetch(worker, "db") == "db", 30, "db answering after the roll")


async def test_stack_rm_leaves_nothing(stack: Stack) -> None:
    s = stack
    vnis = {int(r["VNI"]) for r in table(s.swctl("network", "ls").stdout)
            if r["NAME"].startswith("voting_")}
    assert len(vnis) == 2, vnis
    # docker stack rm voting
    out = s.swctl("stack", "rm", STACK, timeout=180)
    lines = out.stdout.splitlines()
    for gone in (*(f"Removing service voting_{n}" for n in SERVICES),
                 "Removing network voting_frontend", "Removing network voting_backend",
                 "Removing secret voting_db_password", "Removing config voting_db_conf"):
        assert gone in lines, out.stdout
    # Objects: none with the stack's label or name.
    for kind in ("services", "tasks", "secrets", "configs"):
        got = s.swctl("get", kind, "-n", STACK, "-o", "name").stdout.split()
        assert got == [], (kind, got)
    networks = s.swctl("network", "ls").stdout
    assert "voting_" not in networks, networks
    assert STACK not in s.swctl("stack", "ls").stdout
    # Containers: none of the stack's, running or not.
    assert s.c.containers(**{LABEL_NAMESPACE: STACK}) == []
    # The nodes' kernels: no bridge or VXLAN device of the stack's networks left (the
    # agents take them down once no task of theirs uses them).
    stale = {naming.bridge_name(v) for v in vnis} | {naming.vxlan_name(v) for v in vnis}

    def links_left() -> dict[str, list[str]]:
        left = {}
        for node in s.nodes:
            out = subprocess.run(["ip", "-n", f"{netnodes.NETNS_PREFIX}{node}", "-o",
                                  "link"], capture_output=True, text=True, timeout=30).stdout
            names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
            if names & stale:
                left[node] = sorted(names & stale)
        return left

    await until(lambda: not links_left(), 30, f"no links of VNIs {vnis} on the nodes")
