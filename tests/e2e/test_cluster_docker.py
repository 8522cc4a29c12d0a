"""End to end: a 3-node cluster of network namespaces, real dockerd, real agents.

``swctl up -d --nodes 3`` builds the cluster exactly as a user does (bridge, namespaces,
one agent per namespace, etcd on the bridge address, the controller-manager), under
names and addresses of this run's own (``--node-prefix``, ``--bridge``, ``--underlay``,
its own etcd port and key prefix), so it never touches a cluster someone else runs on
the machine. A fourth namespace on the same bridge runs an agent with the process
driver, for the "no Docker" case.

Tests run in order against the one cluster (starting it is most of the cost), quiet ones
first, then the disruptive ones (drain, SIGKILL of an agent, restart), and last ``swctl
down``, which must leave no namespace, link, container or process of the run behind. The
module fixture runs ``down`` again and removes the process node whatever happened, so a
failing test cleans up too. Every wait polls etcd or dockerd with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import pytest

from shoal.agent.exec.executor import LABEL_NODE, LABEL_TASK_UID
from shoal.agent.process import driver as process_driver
from shoal.cli import leftovers, netnodes
from shoal.crds import resource
from shoal.crds import taskstates as ts
from tests.e2e import upcluster
from tests.e2e.upcluster import Cluster, until
from tests.e2e.upcluster import down as _down
from tests.e2e.upcluster import run as _run
from tests.integration.cli_support import command

pytestmark = pytest.mark.timeout(240)


# Every service stops at once when asked: `sleep` as PID 1 ignores SIGTERM.
FAST_STOP = {"stopGracePeriod": "1s"}
SLEEPER = {"image": "shoal/busybox", "command": ["sleep", "3600"], **FAST_STOP}


def service_doc(name: str, template: dict[str, Any], replicas: int = 1,
                constraints: list[str] | None = None, docker: bool = True,
                **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"replicas": replicas, "template": template,
                            "restartPolicy": {"condition": "any", "delay": "0s"}, **spec}
    if docker:  # docker tasks stay off the process-driver node
        constraints = [*(constraints or []), "node.labels.runtime!=process"]
    if constraints:
        body["placement"] = {"constraints": constraints}
    return {"apiVersion": "shoal.io/v1", "kind": "Service",
            "metadata": {"name": name}, "spec": body}


async def _remove_proc_node(cluster: Cluster) -> None:
    node = cluster.proc_node
    if node is None:
        return
    with contextlib.suppress(Exception):
        netnodes.end_processes(netnodes.Underlay(cluster.bridge, cluster.underlay, "", (node,)))
    await leftovers.remove_processes_async([node.name])
    _run(["ip", "netns", "del", node.netns])
    _run(["ip", "link", "del", node.veth])
    with contextlib.suppress(OSError):
        (process_driver.DEFAULT_STATE_DIR / "process" / node.name).rmdir()
    cluster.proc_node = None


def _start_proc_node(cluster: Cluster) -> None:
    """A fourth namespace on the cluster's bridge, its agent on the process driver."""
    net = ipaddress.ip_network(cluster.underlay)
    name = f"{cluster.tag}-p"
    node = netnodes.NetNode(name, f"{netnodes.NETNS_PREFIX}{name}", f"sv-{name}",
                            str(net.network_address + 50))
    under = netnodes.Underlay(cluster.bridge, cluster.underlay,
                              str(net.network_address + 1), (node,))
    cluster.proc_node = node  # recorded first: the finalizer removes a half-built node
    netnodes.build_node(under, node)
    argv = [sys.executable, "-m", "shoal.cli", "--etcd", under.etcd_url(cluster.etcd_port),
            "--prefix", cluster.prefix, "agent", "--runtime", "process", "--name", name,
            "--address", node.address, "--label", "runtime=process"]
    with open(cluster.state_dir / "logs" / f"agent-{name}.log", "ab") as out:
        cluster.restarted.append(subprocess.Popen(
            netnodes.agent_argv(node, argv), stdin=subprocess.DEVNULL, stdout=out,
            stderr=out, start_new_session=True))


@pytest.fixture(scope="module")
def tag() -> str:
    return "e" + secrets.token_hex(3)


@pytest.fixture(scope="module")
async def cluster(docker_client: Any, tag: str, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    async with upcluster.started(docker_client, tag, tmp_path_factory.mktemp("cluster"),
                                 request) as made:
        try:
            _start_proc_node(made)
            yield made
        finally:
            try:
                await _remove_proc_node(made)
            except Exception as exc:  # never let it keep `down` from running
                print(f"removing the process node failed: {exc!r}")


@pytest.fixture(scope="module")
async def services(cluster: Cluster) -> AsyncIterator[Cluster]:
    """The services of the quiet tests, created at once so their waits overlap."""
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    cluster.apply(
        service_doc("spread", SLEEPER, replicas=6),
        service_doc("pinned", SLEEPER, replicas=2, constraints=[f"node.hostname=={n2}"]),
        service_doc("sick", {
            "image": "shoal/busybox", **FAST_STOP,
            # Healthy for about four seconds, then the check fails for good.
            "command": ["sh", "-c", "touch /tmp/ok; sleep 4; rm /tmp/ok; exec sleep 3600"],
            "healthcheck": {"test": ["CMD-SHELL", "test -f /tmp/ok"], "interval": "1s",
                            "timeout": "1s", "retries": 2}},
            constraints=[f"node.hostname=={n1}"]),
        service_doc("chatty", {
            "image": "shoal/busybox", **FAST_STOP,
            "command": ["sh", "-c", 'echo "hello from $SHOAL_SLOT"; echo "oops" >&2; '
                        "exec sleep 3600"],
            "env": {"SHOAL_SLOT": "x"}},
            replicas=2, constraints=[f"node.hostname!={cluster.nodes[2]}"]),
        # The process driver ignores the image; it runs the command on the host.
        service_doc("native", {"image": "shoal/busybox", **FAST_STOP,
                               "command": ["sh", "-c", "echo native $(hostname); "
                                           "exec sleep 3600"]},
                    constraints=["node.labels.runtime==process"], docker=False),
    )
    yield cluster


# --- the quiet tests ---

async def test_replicas_spread_with_real_containers(services: Cluster) -> None:
    c = services
    running = await until(lambda: _exactly(c.running("spread"), 6), 60, "6 spread running")
    per_node: dict[str, int] = {}
    for task in running:
        node = ts.node_name_of(task)
        assert node in c.nodes, f"{task.name} on {node}: the process node is not for docker"
        per_node[node] = per_node.get(node, 0) + 1
        found = c.containers_of_task(task.metadata.uid)
        assert len(found) == 1, f"{task.name}: {len(found)} containers"
        assert found[0].status == "running"
        assert found[0].labels[LABEL_NODE] == node
        assert found[0].id == task.status["containerId"]
    assert per_node == {n: 2 for n in c.nodes}, per_node


async def test_constraints_place_containers(services: Cluster) -> None:
    c = services
    n2, n3 = c.nodes[1], c.nodes[2]
    pinned = await until(lambda: _exactly(c.running("pinned"), 2), 60, "pinned running")
    assert {ts.node_name_of(t) for t in pinned} == {n2}
    assert len([x for x in c.containers(**{LABEL_NODE: n2}) if x.status == "running"
                and x.labels["shoal.io/service"] == "pinned"]) == 2
    # A label added by the user, then a service that asks for it.
    c.swctl("node", "update", "--label-add", "zone=blue", n3)
    c.apply(service_doc("labelled", SLEEPER, replicas=2,
                        constraints=["node.labels.zone==blue"]))
    labelled = await until(lambda: _exactly(c.running("labelled"), 2), 60, "labelled running")
    assert {ts.node_name_of(t) for t in labelled} == {n3}
    for task in labelled:
        [container] = c.containers_of_task(task.metadata.uid)
        assert container.labels[LABEL_NODE] == n3 and container.status == "running"
    c.swctl("delete", "service", "labelled", "pinned")


async def test_unhealthy_container_is_replaced(services: Cluster) -> None:
    c = services

    async def replaced() -> list[resource.Resource]:
        tasks = await c.tasks("sick")
        failed = [t for t in tasks if t.status.get("state") == ts.FAILED
                  and "unhealthy" in str(t.status.get("message", "")) + str(
                      t.status.get("err", ""))]
        after = [t for t in tasks if ts.is_running(t) and ts.is_active_desired(t)]
        return failed + after if failed and after else []

    found = await until(replaced, 60, "an unhealthy sick task replaced by a running one")
    failed = next(t for t in found if t.status.get("state") == ts.FAILED)
    fresh = next(t for t in found if ts.is_running(t))
    assert fresh.metadata.uid != failed.metadata.uid
    [old] = c.containers_of_task(failed.metadata.uid)
    assert old.status != "running"  # stopped, kept (history) until its task is deleted
    [new] = c.containers_of_task(fresh.metadata.uid)
    assert new.status == "running" and new.id != old.id
    c.swctl("delete", "service", "sick")


async def test_bad_image_is_rejected_with_its_error(services: Cluster) -> None:
    c = services
    image = f"shoal/no-such-image-{c.tag}:1"
    out = c.apply(service_doc("badimage", {"image": image, "command": ["true"]}),
                  wait=True, expect=None)
    assert out.returncode != 0, out.stdout
    assert "rejected" in (out.stdout + out.stderr), out.stdout + out.stderr
    ps = c.swctl("service", "ps", "--no-trunc", "badimage")
    assert "Rejected" in ps.stdout, ps.stdout
    tasks = await c.tasks("badimage")
    errors = {str(t.status.get("err") or t.status.get("message")) for t in tasks}
    assert any(image in e for e in errors), errors
    # The pull error itself (no registry is reachable here), shown by `service ps`.
    assert any(e in ps.stdout for e in errors), (errors, ps.stdout)
    assert not c.containers(**{"shoal.io/service": "badimage"})
    c.swctl("delete", "service", "badimage")


async def test_logs_from_tasks_on_two_nodes(services: Cluster) -> None:
    c = services
    chatty = await until(lambda: _exactly(c.running("chatty"), 2), 60, "chatty running")
    nodes = {ts.node_name_of(t) for t in chatty}
    assert len(nodes) == 2, nodes  # spread over two nodes

    def both() -> subprocess.CompletedProcess[str] | None:
        out = c.swctl("logs", "service/chatty")
        lines = [line for line in out.stdout.splitlines() if "hello from x" in line]
        return out if len(lines) == 2 else None

    out = await until(both, 30, "a hello line from each chatty task")
    for task in chatty:
        prefix = f"chatty.{ts.slot_of(task)}.{task.metadata.uid.replace('-', '')[:12]}" \
                 f"@{ts.node_name_of(task)}"
        assert any(line.startswith(prefix) and line.endswith("| hello from x")
                   for line in out.stdout.splitlines()), (prefix, out.stdout)
        assert any(line.startswith(prefix) and line.endswith("| oops")
                   for line in out.stderr.splitlines()), (prefix, out.stderr)
    # One task, with timestamps; and --tail.
    one = chatty[0]
    single = c.swctl("logs", f"task/{one.metadata.name}", "--timestamps", "--tail", "1")
    assert single.stdout.count("\n") <= 1 and "Z " in (single.stdout + single.stderr)
    # -f streams until interrupted, and picks up the tasks' lines.
    # Interrupted once both tasks' lines are out, not after a fixed sleep: a loaded
    # machine can take longer than that to start swctl itself.
    follow = _spawn(command("logs", "-f", "chatty"), c.env)
    try:
        assert follow.stdout is not None
        read = await asyncio.wait_for(asyncio.to_thread(_read_until, follow.stdout,
                                                        "hello from x", 2), 30)
        follow.send_signal(signal.SIGINT)
        rest, _ = follow.communicate(timeout=10)
    finally:
        if follow.poll() is None:
            follow.kill()
    text = read + rest
    assert follow.returncode == 0 and text.count("hello from x") == 2, text


async def test_process_driver_runs_a_service_without_docker(services: Cluster) -> None:
    c = services
    assert c.proc_node is not None
    [task] = await until(lambda: _exactly(c.running("native"), 1), 60, "native running")
    assert ts.node_name_of(task) == c.proc_node.name
    assert not c.containers(**{"shoal.io/service": "native"})  # no container made
    pid = int(task.status["containerId"])  # the process driver's workload id is its pid
    assert _alive(pid)
    out = await until(lambda: _line_with(c.swctl("logs", "native"), "native"), 20,
                      "native's output through swctl logs")
    assert f"@{c.proc_node.name}" in out, out
    c.swctl("delete", "service", "native")
    await until(lambda: not _alive(pid), 20, "native process stopped")


# --- the disruptive tests ---

async def test_drain_moves_containers(services: Cluster) -> None:
    c = services
    n1 = c.nodes[0]
    await until(lambda: _exactly(c.running("spread"), 6), 60, "6 spread running")
    c.swctl("node", "drain", n1)

    async def moved() -> list[resource.Resource] | None:
        running = await c.running("spread")
        on_n1 = [t for t in await c.tasks("spread") if ts.node_name_of(t) == n1
                 and ts.is_active_desired(t)]
        return running if len(running) == 6 and not on_n1 else None

    running = await until(moved, 60, f"spread moved off {n1}")
    assert {ts.node_name_of(t) for t in running} <= set(c.nodes[1:])
    await until(lambda: not [x for x in c.containers(**{LABEL_NODE: n1})
                             if x.status == "running"], 30, f"no container running on {n1}")
    for task in running:
        [container] = c.containers_of_task(task.metadata.uid)
        assert container.status == "running"
    c.swctl("node", "activate", n1)


async def test_sigkill_agent_fails_over_and_restart_adopts(services: Cluster) -> None:
    c = services
    victim = c.nodes[2]
    await until(lambda: _exactly(c.running("spread"), 6), 60, "6 spread running")
    before = [t for t in await c.running("spread") if ts.node_name_of(t) == victim]
    assert before, f"no spread task on {victim} to fail over"
    record = c.agent_record(victim)
    os.kill(record["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    await until(lambda: _equals(c.node_state(victim), "down"), 15, f"{victim} down")
    t_down = time.monotonic() - t0

    async def failed_over() -> bool:
        running = await c.running("spread")
        return len(running) == 6 and all(ts.node_name_of(t) != victim for t in running)

    await until(failed_over, 30, "spread running elsewhere", interval=0.05)
    t_over = time.monotonic() - t0
    print(f"\nfailover with real containers: node down after {t_down:.2f}s, "
          f"{len(before)} replica(s) running elsewhere after {t_over:.2f}s")
    # The victim's containers outlived its agent, as containers do.
    old = {t.metadata.uid: t.status["containerId"] for t in before}
    for uid in old:
        [container] = c.containers_of_task(uid)
        assert container.status == "running"
    # Restarted, the agent adopts them: their tasks are now shut down, so it stops them;
    # nothing is started twice.
    c.restart_agent(victim)
    await until(lambda: _equals(c.node_state(victim), "ready"), 30, f"{victim} ready again")
    for uid, cid in old.items():
        found = await until(_stopped_containers(c, uid), 30,
                            f"{uid} stopped by the restarted agent")
        assert [x.id for x in found] == [cid]
    _assert_no_duplicates(c)


async def test_agent_restart_adopts_running_containers(services: Cluster) -> None:
    """SIGKILL an agent and start it again: it adopts the containers it was running.

    The controller-manager is paused (SIGSTOP) from the kill until the restarted agent
    holds its heartbeat again, so the node is never declared down and its tasks never
    replaced, however slowly the agent restarts on a loaded machine: what is under test
    here is the agent's adoption, not failover (the test above covers that)."""
    c = services
    node = c.nodes[1]
    c.apply(service_doc("steady", SLEEPER, replicas=2,
                        constraints=[f"node.hostname=={node}"]))
    tasks = await until(lambda: _exactly(c.running("steady"), 2), 60, "steady running")
    ids = {t.metadata.uid: t.status["containerId"] for t in tasks}
    key = c.store.raw_key("heartbeats", node)
    old = await c.store.raw_get(key)
    assert old is not None and old.lease
    manager = next(p["pid"] for p in c.cluster_json()["processes"]
                   if p["name"] == "controller-manager")
    os.kill(manager, signal.SIGSTOP)
    try:
        os.kill(c.agent_record(node)["pid"], signal.SIGKILL)
        c.restart_agent(node)

        async def new_heartbeat() -> bool:
            kv = await c.store.raw_get(key)
            return kv is not None and kv.lease not in (0, old.lease)

        await until(new_heartbeat, 30, f"{node}'s restarted agent holding its heartbeat")
    finally:
        os.kill(manager, signal.SIGCONT)
    await asyncio.sleep(1.0)  # the controllers catch up on what happened meanwhile
    assert await c.node_state(node) == "ready"
    still = await c.running("steady")
    assert {t.metadata.uid: t.status["containerId"] for t in still} == ids
    for uid, cid in ids.items():
        [container] = c.containers_of_task(uid)
        assert container.id == cid and container.status == "running"
    # The adopting agent still does new work.
    c.swctl("scale", "service/steady", "--replicas", "3", "-d")
    grown = await until(lambda: _exactly(c.running("steady"), 3), 60, "steady scaled to 3")
    assert {ts.node_name_of(t) for t in grown} == {node}
    assert {t.metadata.uid: t.status["containerId"] for t in grown if t.metadata.uid in ids} \
        == ids
    _assert_no_duplicates(c)


async def test_down_leaves_nothing_behind(services: Cluster) -> None:
    c = services
    recorded = c.cluster_json()
    await _remove_proc_node(c)  # the test's own node first; the rest is `down`'s job
    t0 = time.monotonic()
    down = _down(c.state_dir, c.env)
    assert down.returncode == 0, down.stdout + down.stderr
    print(f"\nswctl down: {time.monotonic() - t0:.1f}s\n{down.stdout}")
    for proc in c.restarted:
        proc.wait(timeout=10)
    assert not (c.state_dir / "cluster.json").exists()
    spaces = _run(["ip", "netns", "list"]).stdout
    assert c.tag not in spaces, spaces
    links = _run(["ip", "-o", "link"]).stdout
    assert c.tag not in links, links
    for node in [*c.nodes, f"{c.tag}-p"]:
        assert not c.containers(**{LABEL_NODE: node}), node
    for proc in recorded["processes"]:
        assert not _alive(proc["pid"]), proc["name"]
    stray = _processes_mentioning(c.prefix)
    assert not stray, stray
    assert not (process_driver.DEFAULT_STATE_DIR / "process" / f"{c.tag}-p").exists()


# --- helpers ---

async def _exactly(coro: Any, count: int) -> list[resource.Resource] | None:
    found: list[resource.Resource] = await coro
    return found if len(found) == count else None


async def _equals(coro: Any, value: Any) -> bool:
    return bool(await coro == value)


def _line_with(out: subprocess.CompletedProcess[str], text: str) -> str | None:
    return next((line for line in out.stdout.splitlines() if text in line), None)


def _assert_no_duplicates(c: Cluster) -> None:
    per_uid: dict[str, int] = {}
    for node in c.nodes:
        for container in c.containers(**{LABEL_NODE: node}):
            uid = container.labels[LABEL_TASK_UID]
            per_uid[uid] = per_uid.get(uid, 0) + 1
    dups = {uid: n for uid, n in per_uid.items() if n > 1}
    assert not dups, f"tasks with more than one container: {dups}"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def _processes_mentioning(text: str) -> list[str]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmdline = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and _alive(int(p.name)):
            out.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return out


def _stopped_containers(c: Cluster, uid: str) -> Callable[[], list[Any]]:
    return lambda: [x for x in c.containers_of_task(uid) if x.status != "running"]


def _read_until(stream: IO[str], needle: str, count: int) -> str:
    """Lines from ``stream`` up to the one that brings ``needle``'s count to ``count``."""
    text = ""
    while text.count(needle) < count:
        line = stream.readline()
        if not line:
            break
        text += line
    return text


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
